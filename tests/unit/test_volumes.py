"""Volume and fee summaries from a daily series."""

from __future__ import annotations

from defi_realtime.application.volumes import overall, summarise


def test_a_summary_reads_back_from_the_latest_day() -> None:
    days = {100: 10.0, 107: 0.0, 113: 5.0, 114: 8.0}
    summary = summarise(days)
    assert (summary.total24h, summary.total48hto24h) == (8.0, 5.0)
    assert summary.total7d == 13.0  # days 108..114
    assert summary.total30d == 23.0
    assert summary.change_1d == 60.0
    assert summary.change_7d is None  # day 107 is zero: no percent change from it
    assert summary.change_1m is None  # day 84 is missing
    assert summary.chart[0] == (100 * 86_400, 10.0)
    empty = summarise({})
    assert (empty.total24h, empty.total7d, empty.chart) == (None, None, [])


def test_the_overall_series_sums_protocols_per_day() -> None:
    assert overall({"a": {1: 1.0, 2: 2.0}, "b": {2: 3.0}}) == {1: 1.0, 2: 5.0}
