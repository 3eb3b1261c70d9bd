"""Contract of the ``HistoryReadModel`` port, run against SQLite and PostgreSQL.

``HistoryContract`` holds every test; each backend subclass only supplies a fresh database
URL (a tmp_path file for SQLite, a throwaway schema selected through ``search_path`` for
PostgreSQL).
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.adapters.sql_schema import (
    ALERT_EVENTS,
    GROUP_DAYS,
    HISTORY_METADATA,
    MIGRATIONS_DIR,
    POSTGRES_ONLY_INDEXES,
    PRICE_OBSERVATIONS,
    PROTOCOLS,
    SERIES_DAYS,
    SERIES_STATES,
    VERSION_TABLE,
    is_detail_partition,
    migrate,
)
from defi_realtime.application.log import LogBatch, LogEntry, LogGapError
from defi_realtime.application.time_travel import Cut
from defi_realtime.application.views import SeriesPoint, SeriesQuery
from tests.services import throwaway_schema

T0 = 1_700_000_000.0

OpenModel = Callable[[], SqlHistoryReadModel]


# --- building log entries ---------------------------------------------------------------


def metric(
    position: int,
    observed_at: float,
    value: float,
    *,
    slug: str = "aave",
    name: str = "tvl",
    chain: str = "total",
) -> LogEntry:
    return LogEntry(
        position=position,
        kind="metric",
        key=slug,
        data={
            "metric": name,
            "chain": chain,
            "value": value,
            "observed_at": observed_at,
            "source": "test",
        },
        recorded_at=T0 + position,
    )


def price(position: int, token: str, value: float, observed_at: float) -> LogEntry:
    return LogEntry(
        position=position,
        kind="price",
        key=token,
        data={"price": value, "observed_at": observed_at, "confidence": 0.9},
        recorded_at=T0 + position,
    )


def listing(position: int, slug: str, kind: str = "protocol_listed", **data: Any) -> LogEntry:
    details = {"name": slug.title(), "category": "Lending", "chains": ["ethereum"], "url": ""}
    return LogEntry(
        position=position, kind=kind, key=slug, data={**details, **data}, recorded_at=T0
    )


def alert(position: int, rule: str, kind: str, key: str) -> LogEntry:
    return LogEntry(
        position=position,
        kind=kind,
        key=rule,
        data={"owner": "alice", "measure": 1.5, "observed_at": T0, "idempotency_key": key},
        recorded_at=T0,
    )


def batch(after: int, *entries: LogEntry, last: int | None = None) -> LogBatch:
    end = last if last is not None else max([after, *(entry.position for entry in entries)])
    return LogBatch(after=after, last=end, entries=entries)


def points(*pairs: tuple[float, float]) -> list[SeriesPoint]:
    return [SeriesPoint(timestamp=t, value=v) for t, v in pairs]


def read_rows(url: str, table: Table) -> list[dict[str, Any]]:
    """Read a table behind the model's back, through a separate engine."""
    engine = create_engine(_driver_url(url), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            result = connection.execute(select(table).order_by(*table.primary_key.columns))
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


ROLLUPS = (SERIES_STATES, SERIES_DAYS, GROUP_DAYS)


def _approx_rows(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Rows comparable across the group sums' rounding (they move by deltas): floats to 9
    significant digits, residues of 0 as 0; a group row without members is no row."""

    def number(value: Any) -> Any:
        if not isinstance(value, float):
            return value
        return 0.0 if abs(value) < 1e-6 else float(f"{value:.9g}")

    return sorted(
        repr(sorted((key, number(value)) for key, value in row.items()))
        for row in rows
        if row.get("members", 1) != 0
    )


def _driver_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# --- the reference for the property test ------------------------------------------------


def reference_series(entries: Sequence[LogEntry], query: SeriesQuery) -> list[SeriesPoint]:
    """``series()`` computed plainly: group, keep the last (observed_at, position), sort."""
    best: dict[float, tuple[float, int, float]] = {}
    for entry in entries:
        if entry.kind != "metric" or entry.key != query.slug:
            continue
        data = entry.data
        if data["metric"] != query.metric or data["chain"] != query.chain:
            continue
        t = float(data["observed_at"])
        if query.start is not None and t < query.start:
            continue
        if query.end is not None and t > query.end:
            continue
        if query.as_of is not None and t > query.as_of:
            continue
        group = t if query.bucket is None else float(math.floor(t / query.bucket) * query.bucket)
        candidate = (t, entry.position, float(data["value"]))
        if group not in best or candidate[:2] > best[group][:2]:
            best[group] = candidate
    ordered = [SeriesPoint(timestamp=k, value=best[k][2]) for k in sorted(best)]
    return ordered[-query.limit :] if query.limit > 0 else []


_observation = st.tuples(
    st.sampled_from(["aave", "curve"]),
    st.sampled_from(["tvl", "fees_24h"]),
    st.sampled_from(["total", "ethereum"]),
    # Few distinct timestamps: plenty of ties (corrections) and shared buckets.
    st.integers(min_value=0, max_value=40).map(lambda n: T0 + n * 7.5),
    st.integers(min_value=0, max_value=1_000).map(float),
)


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[list[LogEntry], list[LogBatch]]:
    """Log entries, then the batches delivering them: in order, with redeliveries of old
    batches and overlapping merges of consecutive ones (what an at-least-once fan-out does).
    """
    observations = draw(st.lists(_observation, max_size=40))
    entries: list[LogEntry] = []
    position = 0
    for slug, name, chain, observed_at, value in observations:
        # Positions skip now and then: facts about other aggregates are not in the batch.
        position += draw(st.integers(min_value=1, max_value=3))
        if draw(st.integers(min_value=0, max_value=9)) == 0:
            entries.append(price(position, "eth", value, observed_at))
        else:
            entries.append(metric(position, observed_at, value, slug=slug, name=name, chain=chain))
    last = position + draw(st.integers(min_value=0, max_value=2))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(last - 1, 1)))))
    bounds = [0, *(cut for cut in cuts if cut < last), last]
    batches = [
        LogBatch(
            after=lo,
            last=hi,
            entries=tuple(entry for entry in entries if lo < entry.position <= hi),
        )
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]
    deliveries: list[LogBatch] = []
    index = 0
    while index < len(batches):
        choice = draw(st.integers(min_value=0, max_value=3))
        if choice == 0 and index + 1 < len(batches):
            first, second = batches[index], batches[index + 1]
            deliveries.append(LogBatch(first.after, second.last, first.entries + second.entries))
            if draw(st.booleans()):
                deliveries.append(second)  # overlaps what was just applied: a replay
            index += 2
            continue
        deliveries.append(batches[index])
        if choice == 1:
            deliveries.append(batches[draw(st.integers(min_value=0, max_value=index))])
        index += 1
    return entries, deliveries


_queries = st.builds(
    SeriesQuery,
    slug=st.sampled_from(["aave", "curve", "unknown"]),
    metric=st.sampled_from(["tvl", "fees_24h"]),
    chain=st.sampled_from(["total", "ethereum"]),
    start=st.none() | st.integers(min_value=-1, max_value=41).map(lambda n: T0 + n * 7.5),
    end=st.none() | st.integers(min_value=-1, max_value=41).map(lambda n: T0 + n * 7.5),
    bucket=st.sampled_from([None, None, 15, 60, 3_600]),
    as_of=st.none() | st.integers(min_value=0, max_value=40).map(lambda n: T0 + n * 7.5 + 3),
    limit=st.integers(min_value=1, max_value=50),
)


# --- the contract -----------------------------------------------------------------------


class HistoryContract:
    """Every ``HistoryReadModel`` test; subclasses provide the ``url`` fixture."""

    @pytest.fixture
    def open_model(self, url: str) -> Iterator[OpenModel]:
        """Open read models on ``url`` (a new one is a restart); all closed afterwards."""
        opened: list[SqlHistoryReadModel] = []

        def open_() -> SqlHistoryReadModel:
            model = SqlHistoryReadModel(url)
            opened.append(model)
            return model

        yield open_
        for model in opened:
            model.close()

    @pytest.fixture
    def model(self, open_model: OpenModel) -> SqlHistoryReadModel:
        return open_model()

    # -- exactly once ------------------------------------------------------------------

    def test_new_model_is_empty_at_position_zero(self, model: SqlHistoryReadModel) -> None:
        assert model.position() == 0
        assert list(model.series(SeriesQuery("aave")).points) == []
        assert not model.protocol_exists("aave")

    def test_replayed_batch_returns_false_and_changes_nothing(
        self, model: SqlHistoryReadModel, url: str
    ) -> None:
        first = batch(0, metric(1, T0, 10.0), price(2, "eth", 3_000.0, T0), metric(3, T0 + 60, 11))
        assert model.apply(first) is True
        before = model.series(SeriesQuery("aave"))
        prices_before = read_rows(url, PRICE_OBSERVATIONS)

        assert model.apply(first) is False
        assert model.apply(batch(1, metric(2, T0 + 5, 99.0), last=2)) is False

        assert model.position() == 3
        assert model.series(SeriesQuery("aave")) == before
        assert list(before.points) == points((T0, 10.0), (T0 + 60, 11.0))
        assert read_rows(url, PRICE_OBSERVATIONS) == prices_before

    def test_partially_overlapping_batch_applies_only_the_new_entries(
        self, model: SqlHistoryReadModel
    ) -> None:
        model.apply(batch(0, metric(1, T0, 1.0), metric(2, T0 + 60, 2.0), metric(3, T0 + 120, 3)))
        # Positions 2 and 3 again (with other values: proof that they are skipped), then new.
        overlap = batch(
            1,
            metric(2, T0 + 60, 200.0),
            metric(3, T0 + 120, 300.0),
            metric(4, T0 + 180, 4.0),
            metric(5, T0 + 240, 5.0),
        )
        assert model.apply(overlap) is True
        assert model.position() == 5
        assert list(model.series(SeriesQuery("aave")).points) == points(
            (T0, 1.0), (T0 + 60, 2.0), (T0 + 120, 3.0), (T0 + 180, 4.0), (T0 + 240, 5.0)
        )

    def test_batch_without_entries_still_advances_the_position(
        self, model: SqlHistoryReadModel
    ) -> None:
        assert model.apply(batch(0, last=7)) is True
        assert model.position() == 7
        assert model.apply(batch(7, metric(8, T0, 1.0))) is True
        assert model.position() == 8

    def test_gap_raises_and_writes_nothing(self, model: SqlHistoryReadModel, url: str) -> None:
        with pytest.raises(LogGapError) as raised:
            model.apply(batch(1, metric(2, T0, 1.0), price(3, "eth", 1.0, T0)))
        assert (raised.value.position, raised.value.batch_after) == (0, 1)
        assert model.position() == 0

        model.apply(batch(0, metric(1, T0, 1.0)))
        with pytest.raises(LogGapError):
            model.apply(batch(2, metric(3, T0 + 60, 3.0), price(4, "eth", 1.0, T0)))
        assert model.position() == 1
        assert list(model.series(SeriesQuery("aave")).points) == points((T0, 1.0))
        assert read_rows(url, PRICE_OBSERVATIONS) == []

    def test_concurrent_workers_apply_a_batch_exactly_once(self, open_model: OpenModel) -> None:
        workers = [open_model(), open_model()]
        work = batch(0, *(metric(p, T0 + p, float(p)) for p in range(1, 201)))
        barrier = threading.Barrier(len(workers))
        results: list[bool | BaseException] = []

        def run(worker: SqlHistoryReadModel) -> None:
            barrier.wait()
            try:
                results.append(worker.apply(work))
            except BaseException as error:  # reported by the assertion below
                results.append(error)

        threads = [threading.Thread(target=run, args=(worker,)) for worker in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results, key=str) == [False, True]
        assert len(workers[0].series(SeriesQuery("aave")).points) == 200

    # -- series --------------------------------------------------------------------------

    def test_series_is_in_time_order_whatever_the_arrival_order(
        self, model: SqlHistoryReadModel
    ) -> None:
        model.apply(batch(0, metric(1, T0 + 120, 3.0), metric(2, T0, 1.0), metric(3, T0 + 60, 2.0)))
        assert list(model.series(SeriesQuery("aave")).points) == points(
            (T0, 1.0), (T0 + 60, 2.0), (T0 + 120, 3.0)
        )

    def test_series_selects_protocol_metric_and_chain(self, model: SqlHistoryReadModel) -> None:
        model.apply(
            batch(
                0,
                metric(1, T0, 1.0),
                metric(2, T0, 2.0, slug="curve"),
                metric(3, T0, 3.0, name="fees_24h"),
                metric(4, T0, 4.0, chain="ethereum"),
                price(5, "aave", 5.0, T0),
            )
        )
        assert list(model.series(SeriesQuery("aave")).points) == points((T0, 1.0))
        assert list(model.series(SeriesQuery("curve")).points) == points((T0, 2.0))
        fees = model.series(SeriesQuery("aave", metric="fees_24h"))
        assert (fees.slug, fees.metric, fees.chain) == ("aave", "fees_24h", "total")
        assert list(fees.points) == points((T0, 3.0))
        chain = model.series(SeriesQuery("aave", chain="ethereum"))
        assert list(chain.points) == points((T0, 4.0))

    def test_start_and_end_are_inclusive(self, model: SqlHistoryReadModel) -> None:
        model.apply(batch(0, *(metric(p, T0 + 60 * p, float(p)) for p in range(1, 6))))
        query = SeriesQuery("aave", start=T0 + 120, end=T0 + 240)
        assert list(model.series(query).points) == points(
            (T0 + 120, 2.0), (T0 + 180, 3.0), (T0 + 240, 4.0)
        )
        assert list(model.series(SeriesQuery("aave", start=T0 + 241)).points) == points(
            (T0 + 300, 5.0)
        )
        assert list(model.series(SeriesQuery("aave", end=T0 + 119)).points) == points(
            (T0 + 60, 1.0)
        )
        assert list(model.series(SeriesQuery("aave", start=T0 + 200, end=T0 + 100)).points) == []

    def test_as_of_shows_only_what_was_observed_by_then(self, model: SqlHistoryReadModel) -> None:
        model.apply(batch(0, *(metric(p, T0 + 60 * p, float(p)) for p in range(1, 6))))
        assert list(model.series(SeriesQuery("aave", as_of=T0 + 180)).points) == points(
            (T0 + 60, 1.0), (T0 + 120, 2.0), (T0 + 180, 3.0)
        )
        assert list(model.series(SeriesQuery("aave", as_of=T0 + 59)).points) == []
        bucketed = SeriesQuery("aave", as_of=T0 + 150, bucket=3_600)
        assert list(model.series(bucketed).points) == points((1_699_999_200.0, 2.0))

    def test_bucket_reports_the_last_observation_at_the_bucket_start(
        self, model: SqlHistoryReadModel
    ) -> None:
        hour = 1_699_999_200.0  # T0 floored to the hour
        model.apply(
            batch(
                0,
                metric(1, hour + 10, 1.0),
                metric(2, hour + 3_000, 3.0),  # last of the first hour ...
                metric(3, hour + 1_000, 2.0),  # ... though this one arrived later
                metric(4, hour + 3_600, 4.0),  # first second of the next hour
                metric(5, hour + 7_199.5, 5.0),
                metric(6, hour + 3 * 3_600 + 1, 6.0),  # an hour without data in between
            )
        )
        series = model.series(SeriesQuery("aave", bucket=3_600))
        assert list(series.points) == points(
            (hour, 3.0), (hour + 3_600, 5.0), (hour + 3 * 3_600, 6.0)
        )

    def test_bucket_width_that_does_not_divide_the_epoch_offset(
        self, model: SqlHistoryReadModel
    ) -> None:
        # Buckets start at multiples of 7 s since the epoch: ... 1_699_999_994, 1_700_000_001.
        model.apply(
            batch(0, metric(1, T0 - 6, 0.0), metric(2, T0 + 0.25, 1.0), metric(3, T0 + 6.75, 2.0))
        )
        assert list(model.series(SeriesQuery("aave", bucket=7)).points) == points(
            (1_699_999_994.0, 1.0), (1_700_000_001.0, 2.0)
        )

    def test_correction_at_the_same_timestamp_wins(self, model: SqlHistoryReadModel) -> None:
        model.apply(batch(0, metric(1, T0, 1.0), metric(2, T0 + 60, 2.0)))
        model.apply(batch(2, metric(3, T0, 10.0), metric(4, T0 + 60, 20.0)))
        model.apply(batch(4, metric(5, T0, 100.0)))
        assert list(model.series(SeriesQuery("aave")).points) == points(
            (T0, 100.0), (T0 + 60, 20.0)
        )
        # In a bucket, the correction of the last timestamp is the bucket's value.
        assert list(model.series(SeriesQuery("aave", bucket=86_400)).points) == points(
            (float(math.floor(T0 / 86_400) * 86_400), 20.0)
        )

    def test_limit_keeps_the_most_recent_points(self, model: SqlHistoryReadModel) -> None:
        model.apply(batch(0, *(metric(p, T0 + 60 * p, float(p)) for p in range(1, 11))))
        assert list(model.series(SeriesQuery("aave", limit=3)).points) == points(
            (T0 + 480, 8.0), (T0 + 540, 9.0), (T0 + 600, 10.0)
        )
        bucketed = model.series(SeriesQuery("aave", bucket=120, limit=2))
        assert [point.value for point in bucketed.points] == [8.0, 10.0]
        assert list(model.series(SeriesQuery("aave", limit=0)).points) == []

    def test_invalid_bucket_or_limit_is_refused(self, model: SqlHistoryReadModel) -> None:
        with pytest.raises(ValueError, match="bucket"):
            model.series(SeriesQuery("aave", bucket=0))
        with pytest.raises(ValueError, match="limit"):
            model.series(SeriesQuery("aave", limit=-1))

    # -- other facts ---------------------------------------------------------------------

    def test_price_rows_are_recorded(self, model: SqlHistoryReadModel, url: str) -> None:
        model.apply(batch(0, price(1, "eth", 3_000.5, T0), price(2, "btc", 60_000.0, T0 + 1)))
        no_confidence = replace(
            price(3, "eth", 3_001.0, T0 + 60),
            data={"price": 3_001.0, "observed_at": T0 + 60, "source": "feed"},
        )
        model.apply(batch(2, no_confidence))
        rows = read_rows(url, PRICE_OBSERVATIONS)
        assert [
            (r["position"], r["token"], r["price"], r["observed_at"], r["confidence"], r["source"])
            for r in rows
        ] == [
            (1, "eth", 3_000.5, T0, 0.9, ""),
            (2, "btc", 60_000.0, T0 + 1, 0.9, ""),
            (3, "eth", 3_001.0, T0 + 60, None, "feed"),
        ]

    def test_recent_tvl_closes(self, model: SqlHistoryReadModel) -> None:
        """Each protocol's last total TVL of each day, ``days`` days back from its own
        latest, and its first day; asOf cuts its day at asOf; knownAt reads the raw facts."""
        day = 86_400.0
        start = math.floor(T0 / day) * day
        model.apply(
            batch(
                0,
                metric(1, start + 60, 5.0),  # the first day, outside the window
                metric(2, start + 10 * day + 60, 10.0),
                metric(3, start + 10 * day + 120, 11.0),  # the day's close
                metric(4, start + 11 * day + 60, 12.0),
                metric(5, start + 11 * day + 60, 99.0, chain="Ethereum"),  # not the total
                metric(6, start + 11 * day + 30, 7.0, slug="curve"),
            )
        )
        recent = model.recent_tvl_closes(Cut(), 5)
        assert recent["aave"].first_observed_at == start
        assert recent["aave"].closes == tuple(
            points((start + 10 * day, 11.0), (start + 11 * day, 12.0))
        )
        assert recent["curve"].closes == tuple(points((start + 11 * day, 7.0)))
        # As of the middle of day 10: that day's close is the last value by then.
        cut = model.recent_tvl_closes(Cut(as_of=start + 10 * day + 90), 30)
        assert cut["aave"].closes == tuple(points((start, 5.0), (start + 10 * day, 10.0)))
        assert "curve" not in cut
        known = model.recent_tvl_closes(Cut(known_at=2), 30)
        assert known["aave"].closes == tuple(points((start, 5.0), (start + 10 * day, 10.0)))
        # A new fact moves the position: the kept answer is not served again.
        model.apply(batch(6, metric(7, start + 12 * day, 13.0)))
        assert model.recent_tvl_closes(Cut(), 5)["aave"].closes[-1] == SeriesPoint(
            start + 12 * day, 13.0
        )

    def test_protocol_listing_and_updates(self, model: SqlHistoryReadModel, url: str) -> None:
        model.apply(batch(0, listing(1, "aave"), listing(2, "curve")))
        assert model.protocol_exists("aave")
        assert model.protocol_exists("curve")
        assert not model.protocol_exists("uniswap")
        model.apply(
            batch(
                2,
                listing(3, "aave", "protocol_updated", name="Aave V3", chains=["ethereum", "base"]),
                # A partial update: the fields it lacks keep their values.
                LogEntry(4, "protocol_updated", "aave", {"url": "https://aave.com"}, T0),
            )
        )
        rows = {row["slug"]: row for row in read_rows(url, PROTOCOLS)}
        assert rows["aave"] == {
            "slug": "aave",
            "name": "Aave V3",
            "category": "Lending",
            "chains": ["ethereum", "base"],
            "url": "https://aave.com",
            "position": 4,
            "oracles": [],
        }
        assert rows["curve"]["position"] == 2
        # Oracles (ADR 0033): kept by an update that does not name them.
        model.apply(
            batch(
                4,
                LogEntry(5, "protocol_updated", "aave", {"oracles": ["Chainlink"]}, T0),
                LogEntry(6, "protocol_updated", "aave", {"name": "Aave"}, T0),
            )
        )
        assert model.listing_details()["aave"].oracles == ("Chainlink",)
        assert model.listing_details()["curve"].oracles == ()

    def test_alert_events_keep_one_row_per_idempotency_key(
        self, model: SqlHistoryReadModel, url: str
    ) -> None:
        model.apply(
            batch(
                0,
                alert(1, "rule-1", "alert_triggered", "rule-1:1"),
                alert(2, "rule-1", "alert_resolved", "rule-1:2"),
                alert(3, "rule-1", "alert_resolved", "rule-1:2"),  # same fact twice
            )
        )
        model.apply(batch(3, alert(4, "rule-1", "alert_triggered", "rule-1:1")))
        rows = read_rows(url, ALERT_EVENTS)
        assert [(r["position"], r["kind"], r["idempotency_key"]) for r in rows] == [
            (1, "triggered", "rule-1:1"),
            (2, "resolved", "rule-1:2"),
        ]
        assert model.position() == 4

    # -- lifecycle -----------------------------------------------------------------------

    def test_reset_forgets_everything(self, model: SqlHistoryReadModel, url: str) -> None:
        model.apply(
            batch(
                0,
                listing(1, "aave"),
                metric(2, T0, 1.0),
                price(3, "eth", 1.0, T0),
                alert(4, "rule-1", "alert_triggered", "k"),
            )
        )
        model.reset()
        assert model.position() == 0
        assert list(model.series(SeriesQuery("aave")).points) == []
        assert not model.protocol_exists("aave")
        for table in (PRICE_OBSERVATIONS, PROTOCOLS, ALERT_EVENTS):
            assert read_rows(url, table) == []
        # A rebuild from the start applies again.
        assert model.apply(batch(0, metric(1, T0, 7.0))) is True
        assert list(model.series(SeriesQuery("aave")).points) == points((T0, 7.0))

    def test_migrate_twice_is_a_no_op(self, model: SqlHistoryReadModel, url: str) -> None:
        model.apply(batch(0, metric(1, T0, 1.0)))
        migrate(url)
        migrate(url)
        engine = create_engine(_driver_url(url), poolclass=NullPool)
        try:
            with engine.connect() as connection:
                versions = connection.execute(
                    text(f"SELECT version_num FROM {VERSION_TABLE}")
                ).all()
                context = MigrationContext.configure(
                    connection, opts={"version_table": VERSION_TABLE}
                )
                # The migrated schema is exactly what the queries are built against.
                differences = compare_metadata(context, HISTORY_METADATA)
        finally:
            engine.dispose()
        # One row: the newest revision (whichever that is as migrations are added).
        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        assert [row[0] for row in versions] == [head]
        # PostgreSQL's expression index over a state's span is created by its revision only;
        # the weekly partitions of the detail tables (and their indexes) by the writer.
        differences = [
            d
            for d in differences
            if not (d[0] == "remove_index" and d[1].name in POSTGRES_ONLY_INDEXES)
            and not (d[0] in ("remove_index", "remove_table") and is_detail_partition(d[1]))
        ]
        assert differences == []
        assert model.position() == 1
        assert list(model.series(SeriesQuery("aave")).points) == points((T0, 1.0))

    def test_concurrent_migrations_on_a_fresh_database(self, url: str) -> None:
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def run() -> None:
            barrier.wait()
            try:
                migrate(url)
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []

    def test_concurrent_migrations_from_several_processes(
        self, url: str, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        # Separate processes (as several workers starting at once would be): only the
        # database-side lock stands between them. A file barrier lines them up after their
        # (slow) imports so the upgrades really overlap.
        gate = tmp_path_factory.mktemp("gate")
        script = textwrap.dedent(
            """
            import pathlib, sys, time
            from defi_realtime.adapters.sql_schema import migrate
            gate = pathlib.Path(sys.argv[2])
            (gate / sys.argv[3]).touch()
            deadline = time.monotonic() + 60
            while not (gate / "go").exists():
                if time.monotonic() > deadline:
                    sys.exit("no go")
                time.sleep(0.005)
            migrate(sys.argv[1])
            """
        )
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", script, url, str(gate), f"ready-{index}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(3)
        ]
        try:
            deadline = time.monotonic() + 60
            while len(list(gate.glob("ready-*"))) < len(workers):
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.01)
            (gate / "go").touch()
            outcomes = [worker.communicate(timeout=120) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.communicate()
        assert [worker.returncode for worker in workers] == [0, 0, 0], [
            stderr[-2_000:] for _, stderr in outcomes
        ]

    def test_position_survives_a_restart(self, open_model: OpenModel) -> None:
        first = open_model()
        work = batch(0, metric(1, T0, 1.0), metric(2, T0 + 60, 2.0), last=5)
        first.apply(work)
        first.close()

        restarted = open_model()
        assert restarted.position() == 5
        assert list(restarted.series(SeriesQuery("aave")).points) == points(
            (T0, 1.0), (T0 + 60, 2.0)
        )
        assert restarted.apply(work) is False
        assert restarted.apply(batch(5, metric(6, T0 + 120, 3.0))) is True

    # -- rollups -------------------------------------------------------------------------

    def test_an_upgraded_database_fills_its_rollups_as_the_projection_keeps_them(
        self, open_model: OpenModel, url: str
    ) -> None:
        """A database holding observations from before the rollups existed (their tables
        empty) gets them filled on the next start: the same rows as applying kept."""
        first = open_model()
        entries = [
            listing(1, "aave", name="Aave", category="Lending", chains=["Ethereum", "Base"]),
            listing(2, "curve", name="Curve", category="Dexes", chains=["Ethereum"]),
        ]
        times = [T0 + hours * 3_600 for hours in (0, 1, 5, 24, 25, 30, 49, 170, 200, 26)]
        for index, at in enumerate(times):
            position = len(entries) + 1
            entries.append(metric(position, at, 10.0 + index))
            entries.append(metric(position + 1, at, 5.0 + index, chain="Ethereum"))
            entries.append(metric(position + 2, at, 1.0 + index, slug="curve", name="volume_24h"))
        entries.append(metric(len(entries) + 1, times[3], 99.0))  # a correction, late
        first.apply(batch(0, *entries[:14]))
        first.apply(batch(14, *entries[14:]))
        kept = {table.name: read_rows(url, table) for table in ROLLUPS}
        assert all(kept.values())
        first.close()
        engine = create_engine(_driver_url(url), poolclass=NullPool)
        try:
            with engine.begin() as connection:
                for table in ROLLUPS:
                    connection.execute(table.delete())
        finally:
            engine.dispose()

        restarted = open_model()
        filled = {table.name: read_rows(url, table) for table in ROLLUPS}
        for name, rows in kept.items():
            assert _approx_rows(filled[name]) == _approx_rows(rows), name
        assert restarted.position() == len(entries)

    # -- property ------------------------------------------------------------------------

    # function_scoped_fixture: every example resets the one model. differing_executors:
    # the same test runs on each backend's subclass, sharing examples on purpose.
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
            HealthCheck.too_slow,
        ],
    )
    @given(history=_deliveries(), queries=st.lists(_queries, min_size=1, max_size=6))
    def test_series_matches_a_plain_reference(
        self,
        model: SqlHistoryReadModel,
        history: tuple[list[LogEntry], list[LogBatch]],
        queries: list[SeriesQuery],
    ) -> None:
        entries, deliveries = history
        model.reset()  # the fixture's model is shared by every example
        applied = 0
        for delivery in deliveries:
            assert model.apply(delivery) is (delivery.last > applied)
            applied = max(applied, delivery.last)
        assert model.position() == applied
        for query in queries:
            assert list(model.series(query).points) == reference_series(entries, query), query


# --- backends ---------------------------------------------------------------------------


class TestSqliteHistory(HistoryContract):
    @pytest.fixture
    def url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        # tmp_path_factory rather than tmp_path: one fresh directory per test, also for
        # the property test (whose examples share it and reset the model in between).
        directory = tmp_path_factory.mktemp("history")
        return f"sqlite:///{directory / 'history.db'}"


@pytest.mark.postgres
class TestPostgresHistory(HistoryContract):
    @pytest.fixture
    def url(self) -> Iterator[str]:
        """A throwaway schema, made the only one on ``search_path`` for the model."""
        with throwaway_schema("history_test") as url:
            yield url
