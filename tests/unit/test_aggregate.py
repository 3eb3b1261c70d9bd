"""Aggregate queries: groups, measures, top-N and time buckets, on hand-made views."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from defi_realtime.application.aggregate import (
    AggregateQuery,
    BucketValue,
    Measure,
    aggregate,
    bucket_starts,
    bucketed,
)
from defi_realtime.application.chain_tvl import DAY, Listing
from defi_realtime.application.views import ProtocolView


def view(
    slug: str,
    tvl: float | None,
    category: str,
    chains: tuple[str, ...],
    chain_tvls: dict[str, float] | None = None,
    volume: float | None = None,
) -> ProtocolView:
    return ProtocolView(
        slug=slug,
        name=slug,
        category=category,
        chains=chains,
        url="",
        tvl=tvl,
        chain_tvls=chain_tvls or {},
        change_1h=None,
        change_1d=None,
        change_7d=None,
        volume_24h=volume,
        fees_24h=None,
        updated_at=None,
        position=1,
    )


VIEWS = [
    view("aave", 100.0, "Lending", ("Ethereum", "Base"), {"Ethereum": 70.0, "Base": 30.0}),
    view("kamino", 40.0, "Lending", ("Solana",)),
    view("orca", 20.0, "Dexs", ("Solana",), volume=5.0),
    view("uni", 60.0, "Dexs", ("Ethereum", "Arbitrum"), volume=9.0),  # no split: no chain
    view("cex", None, "CEX", ("Ethereum",)),
]


def by_key(groups: list) -> dict[str, dict[str, float | None]]:
    return {group.key: group.measures for group in groups}


def test_groups_by_category_with_every_measure() -> None:
    measures = tuple(Measure(op, "tvl") for op in ("sum", "avg", "count", "min", "max", "median"))
    groups = aggregate(VIEWS, AggregateQuery(group_by="category", measures=measures))
    assert [g.key for g in groups] == ["Lending", "Dexs", "CEX"]  # largest sum first
    assert by_key(groups)["Lending"] == {
        "sum_tvl": 140.0,
        "avg_tvl": 70.0,
        "count_tvl": 2.0,
        "min_tvl": 40.0,
        "max_tvl": 100.0,
        "median_tvl": 70.0,
    }
    # No value at all: sums and counts are 0, the rest have nothing to say.
    assert by_key(groups)["CEX"] == {
        "sum_tvl": 0.0,
        "avg_tvl": None,
        "count_tvl": 0.0,
        "min_tvl": None,
        "max_tvl": None,
        "median_tvl": None,
    }


def test_chain_groups_add_up_as_chain_tvl() -> None:
    groups = by_key(aggregate(VIEWS, AggregateQuery(group_by="chain")))
    # aave's own split, kamino and orca on their one chain, uni (not split) on none.
    assert groups["Ethereum"] == {"sum_tvl": 70.0}
    assert groups["Solana"] == {"sum_tvl": 60.0}
    assert groups["Base"] == {"sum_tvl": 30.0}
    assert groups["Arbitrum"] == {"sum_tvl": 0.0}


def test_filters_and_top() -> None:
    query = AggregateQuery(
        chains=frozenset({"solana"}),
        categories=frozenset({"dexs", "lending"}),
        group_by="category",
        top=1,
        top_per_group=True,
    )
    groups = aggregate(VIEWS, query)
    assert [(g.key, [t.slug for t in g.top]) for g in groups] == [
        ("Lending", ["kamino"]),
        ("Dexs", ["orca"]),
    ]
    overall = aggregate(VIEWS, AggregateQuery(top=2, top_by="volume_24h", min_tvl=10.0))
    assert [t.slug for t in overall[-1].top] == ["uni", "orca"]
    assert overall[-1].key == "all"


def test_buckets_carry_the_last_value_for_a_week_at_most() -> None:
    day0 = 19_000
    rows = [
        BucketValue("aave", "tvl", "total", day0, 10.0),
        BucketValue("aave", "tvl", "total", day0 + 2, 12.0),
        BucketValue("kamino", "tvl", "total", day0, 5.0),  # then silent
    ]
    listings = {"aave": Listing("aave", "Lending", ("Ethereum",))}
    starts = bucket_starts("1d", day0 * DAY, (day0 + 9) * DAY)
    assert len(starts) == 10
    answer = bucketed(rows, listings, AggregateQuery(), starts, (day0 + 9) * DAY)
    sums = [b.groups[0].measures["sum_tvl"] if b.groups else None for b in answer]
    assert sums == [15.0, 15.0, 17.0, 17.0, 17.0, 17.0, 17.0, 17.0, 12.0, 12.0]
    categories = bucketed(
        rows, listings, AggregateQuery(group_by="category"), starts[:1], starts[0]
    )
    assert by_key(categories[0].groups) == {"Lending": {"sum_tvl": 10.0}, "": {"sum_tvl": 5.0}}


def test_month_buckets_follow_the_calendar() -> None:
    start = datetime(2024, 1, 15, tzinfo=UTC).timestamp()
    end = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    assert [
        datetime.fromtimestamp(s, UTC).date().isoformat() for s in bucket_starts("1mo", start, end)
    ] == [
        "2024-01-01",
        "2024-02-01",
        "2024-03-01",
    ]
    assert bucket_starts("1w", 0, 7 * DAY) == [0, 7 * DAY]


@pytest.mark.parametrize("measure", ["sum", "count"])
def test_an_empty_selection_has_no_group(measure: str) -> None:
    query = AggregateQuery(protocols=frozenset({"nobody"}), measures=(Measure(measure, "tvl"),))  # type: ignore[arg-type]
    assert aggregate(VIEWS, query) == []
