"""The history projection's PostgreSQL writes (ADR 0056): binary array parameters carry every
value exactly, and a batch commits without waiting for its WAL flush, its tracking position
in the same transaction."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine

from defi_realtime.adapters.sql_bulk import BulkWriter
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.views import SeriesQuery
from tests.services import throwaway_schema

pytestmark = pytest.mark.postgres

T0 = 1_700_000_000.0

SAMPLES = MetaData()
SAMPLE = Table(
    "bulk_sample",
    SAMPLES,
    Column("name", Text(), nullable=False),
    Column("small", Integer(), nullable=True),
    Column("big", BigInteger(), nullable=True),
    Column("amount", Double(), nullable=True),
    PrimaryKeyConstraint("name", name="pk_bulk_sample"),
)
# Texts the array literal's text form would have to quote or escape.
AWKWARD = ["NULL", "", 'say "hi"', "a,b", "{x}", "back\\slash", "tab\tnew\nline", "ünï €", " "]


@pytest.fixture
def engine() -> Iterator[Engine]:
    with throwaway_schema("bulk_test") as url:
        engine = create_engine(url)
        SAMPLES.create_all(engine)
        try:
            yield engine
        finally:
            engine.dispose()


def _read(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(select(SAMPLE).order_by(SAMPLE.c.name))]


def test_bulk_rows_come_back_exactly(engine: Engine) -> None:
    amounts = [math.inf, -math.inf, 0.1 + 0.2, 5e-324, -0.0, 1.7976931348623157e308, None]
    rows = [
        {
            "name": name,
            "small": None if index % 4 == 3 else index - 2**31,
            "big": None if index % 5 == 4 else 2**62 + index,
            "amount": amounts[index % len(amounts)],
        }
        for index, name in enumerate(AWKWARD)
    ]
    with engine.begin() as connection:
        BulkWriter("postgresql", SAMPLE).write(connection, rows)

    stored = _read(engine)
    assert stored == sorted(tuple(row.values()) for row in rows)
    assert math.copysign(1.0, {row[0]: row[3] for row in stored}["{x}"]) == -1.0


def test_a_column_of_nulls_only_is_written(engine: Engine) -> None:
    rows = [{"name": name, "small": None, "big": None, "amount": None} for name in ("a", "b")]
    with engine.begin() as connection:
        BulkWriter("postgresql", SAMPLE).write(connection, rows)
    assert _read(engine) == [("a", None, None, None), ("b", None, None, None)]


def test_bulk_upsert_moves_stored_rows_by_deltas(engine: Engine) -> None:
    writer = BulkWriter(
        "postgresql",
        SAMPLE,
        key=("name",),
        update={"big": "bulk_sample.big + excluded.big", "amount": "excluded.amount"},
    )
    with engine.begin() as connection:
        writer.write(connection, [{"name": "x", "small": 1, "big": 10, "amount": 1.5}])
        writer.write(
            connection,
            [
                {"name": "x", "small": 2, "big": 5, "amount": math.inf},
                {"name": "NULL", "small": 3, "big": 7, "amount": None},
            ],
        )
    assert _read(engine) == [("NULL", 3, 7, None), ("x", 1, 15, math.inf)]


def _metric(position: int, observed_at: float, value: float) -> LogEntry:
    return LogEntry(
        position=position,
        kind="metric",
        key="aave",
        data={
            "metric": "tvl",
            "chain": "total",
            "value": value,
            "observed_at": observed_at,
            "source": "test",
        },
        recorded_at=T0 + position,
    )


def test_a_batch_and_its_position_commit_together_without_waiting_for_the_flush() -> None:
    with throwaway_schema("history_commit") as url:
        model = SqlHistoryReadModel(url)
        try:
            engine = model._engine
            seen: list[str] = []

            def statement(_c: Any, _cur: Any, text: str, *_rest: Any) -> None:
                seen.append(" ".join(text.split()))

            def begin(_connection: Any) -> None:
                seen.append("BEGIN")

            def commit(_connection: Any) -> None:
                seen.append("COMMIT")

            event.listen(engine, "before_cursor_execute", statement)
            event.listen(engine, "begin", begin)
            event.listen(engine, "commit", commit)
            try:
                entries = (_metric(1, T0, 10.0), _metric(2, T0 + 60, 11.0))
                assert model.apply(LogBatch(after=0, last=2, entries=entries)) is True
            finally:
                event.remove(engine, "before_cursor_execute", statement)
                event.remove(engine, "begin", begin)
                event.remove(engine, "commit", commit)

            assert seen.count("BEGIN") == seen.count("COMMIT") == 1
            applied = seen[seen.index("BEGIN") + 1 :]
            assert applied[0] == "SET LOCAL synchronous_commit = off"
            tracking = [
                i for i, s in enumerate(applied) if s.startswith("UPDATE projection_tracking")
            ]
            assert len(tracking) == 1
            # One transaction: the setting, the rows and the position, then its commit.
            assert applied.index("COMMIT") == len(applied) - 1 > tracking[0]
            assert model.position() == 2
            assert [p.value for p in model.series(SeriesQuery("aave")).points] == [10.0, 11.0]
        finally:
            model.close()


def test_key_probes_descend_the_index_before_the_tables_are_analyzed() -> None:
    """A fresh projection's tables have no statistics until autovacuum gets to them; its
    probes must not read the whole table per batch meanwhile."""
    with throwaway_schema("history_probes") as url:
        model = SqlHistoryReadModel(url)
        try:
            slugs = [f"p{index}" for index in range(300)]
            entries = [
                LogEntry(
                    position=1 + step * len(slugs) + index,
                    kind="metric",
                    key=slug,
                    data={
                        "metric": "tvl",
                        "chain": "total",
                        "value": 1.0 + step,
                        "observed_at": T0 + 600 * step,
                        "source": "test",
                    },
                    recorded_at=T0,
                )
                for step in range(10)
                for index, slug in enumerate(slugs)
            ]
            model.apply(LogBatch(after=0, last=len(entries), entries=tuple(entries)))
            probes: list[tuple[str, Any]] = []

            def capture(_c: Any, _cur: Any, text: str, parameters: Any, *_rest: Any) -> None:
                if text.lstrip().startswith("WITH k AS"):
                    probes.append((text, parameters))

            late = [  # one new time and one correction of an earlier time, per series
                LogEntry(
                    position=len(entries) + 1 + index,
                    kind="metric",
                    key=slug,
                    data={
                        "metric": "tvl",
                        "chain": "total",
                        "value": 5.0,
                        "observed_at": T0 + 600 * (10 if index % 2 else 3),
                        "source": "test",
                    },
                    recorded_at=T0,
                )
                for index, slug in enumerate(slugs[:40])
            ]
            event.listen(model._engine, "before_cursor_execute", capture)
            try:
                model.apply(
                    LogBatch(after=len(entries), last=len(entries) + 40, entries=tuple(late))
                )
            finally:
                event.remove(model._engine, "before_cursor_execute", capture)

            assert len(probes) >= 3  # heads, the states from a late point, day closes
            with model._engine.connect() as connection:
                analyzed = connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_stats WHERE tablename = 'series_states'"
                ).scalar_one()
                assert analyzed == 0
                for statement, parameters in probes:
                    plan = "\n".join(
                        row[0]
                        for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
                    )
                    assert "Seq Scan on series_" not in plan, plan
        finally:
            model.close()
