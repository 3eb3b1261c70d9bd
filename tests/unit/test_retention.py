"""Retention of the history's raw detail (application/retention.py, ADR 0047)."""

from __future__ import annotations

import pytest

from defi_realtime.application.ports import DetailDropped
from defi_realtime.application.retention import DAY, DetailExpired, DetailRetention, require_detail


class FakeDetailStore:
    def __init__(self) -> None:
        self.cutoffs: list[float] = []

    def detail_since(self) -> float | None:
        return self.cutoffs[-1] if self.cutoffs else None

    def drop_detail_before(self, cutoff: float) -> DetailDropped:
        self.cutoffs.append(cutoff)
        return DetailDropped(cutoff, 1, 0)


def test_a_run_drops_what_is_older_than_the_days_kept() -> None:
    store = FakeDetailStore()
    retention = DetailRetention(store, 30, clock=lambda: 100 * DAY)
    assert retention.run() == DetailDropped(70 * DAY, 1, 0)
    assert store.cutoffs == [70 * DAY]


def test_retention_needs_a_positive_number_of_days() -> None:
    with pytest.raises(ValueError, match="positive"):
        DetailRetention(FakeDetailStore(), 0)


def test_reads_before_the_horizon_are_refused() -> None:
    require_detail(None, 1.0)  # nothing dropped
    require_detail(100.0, None, None)  # unbounded: served from what is held
    require_detail(100.0, 100.0, 500.0)
    with pytest.raises(DetailExpired) as expired:
        require_detail(100.0, 150.0, None, 99.0)
    assert (expired.value.asked, expired.value.horizon) == (99.0, 100.0)
