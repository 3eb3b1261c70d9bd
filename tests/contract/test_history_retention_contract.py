"""Weekly partitions and detail retention of the history read model (ADR 0047), on SQLite
and PostgreSQL: the migration up and down with rows in the tables, inserts into weeks that
have no partition yet, retention dropping old detail and keeping recent detail and rollups.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, func, select, text

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.adapters.sql_partitions import WEEK, week_of
from defi_realtime.adapters.sql_schema import (
    PRICE_OBSERVATIONS,
    PROTOCOL_OBSERVATIONS,
    SERIES_DAYS,
    _alembic_config,
    create_sql_engine,
    write_transaction,
)
from defi_realtime.application.views import SeriesQuery
from tests.contract.test_history_contract import batch, metric, price
from tests.services import throwaway_schema

DAY = 86_400.0
NOW = time.time()
BEFORE_PARTITIONS = "0013_mev_detections"


def _partitions(engine: Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        return sorted(
            connection.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                    " WHERE i.inhparent = to_regclass(:table)"
                ),
                {"table": table},
            ).scalars()
        )


def _partitioned(engine: Engine, table: str) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text("SELECT count(*) FROM pg_partitioned_table WHERE partrelid = to_regclass(:t)"),
                {"t": table},
            ).scalar_one()
        )


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    with write_transaction(engine) as connection:
        config = _alembic_config(connection)
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


class RetentionContract:
    @pytest.fixture
    def url(self) -> Iterator[str]:
        raise NotImplementedError

    @pytest.fixture
    def engine(self, url: str) -> Iterator[Engine]:
        engine = create_sql_engine(url)
        yield engine
        engine.dispose()

    @pytest.fixture
    def model(self, url: str) -> Iterator[SqlHistoryReadModel]:
        model = SqlHistoryReadModel(url)
        yield model
        model.close()

    def test_migration_moves_rows_up_and_down(self, engine: Engine, url: str) -> None:
        _migrate_to(engine, BEFORE_PARTITIONS)
        with write_transaction(engine) as connection:
            for position, at in enumerate((NOW - 400 * DAY, NOW - 3 * DAY, NOW), start=1):
                connection.execute(
                    PROTOCOL_OBSERVATIONS.insert().values(
                        position=position,
                        protocol="aave",
                        metric="tvl",
                        chain="total",
                        observed_at=at,
                        value=float(position),
                        source="",
                        recorded_at=at,
                    )
                )
                connection.execute(
                    PRICE_OBSERVATIONS.insert().values(
                        position=10 + position,
                        token="coingecko:ethereum",
                        observed_at=at,
                        price=float(position),
                        confidence=None,
                        source="",
                        recorded_at=at,
                    )
                )
        _migrate_to(engine, "head")
        assert _count(engine, "protocol_observations") == 3
        assert _count(engine, "price_observations") == 3
        if engine.dialect.name == "postgresql":
            for table in ("protocol_observations", "price_observations"):
                assert _partitioned(engine, table)
                weeks = {week_of(NOW - 400 * DAY), week_of(NOW - 3 * DAY), week_of(NOW)}
                assert len(_partitions(engine, table)) == len(weeks)
        model = SqlHistoryReadModel(url)
        try:
            assert model.position() == 0
            values = [point.value for point in model.series(SeriesQuery("aave")).points]
            assert values == [1.0, 2.0, 3.0]
            # The migrated schema takes new rows, in a week that had no partition.
            assert model.apply(batch(0, metric(21, NOW + 30 * DAY, 4.0), last=21))
        finally:
            model.close()
        _migrate_to(engine, BEFORE_PARTITIONS, down=True)
        assert _count(engine, "protocol_observations") == 4
        assert _count(engine, "price_observations") == 3
        if engine.dialect.name == "postgresql":
            assert not _partitioned(engine, "protocol_observations")
            assert _partitions(engine, "protocol_observations") == []
        _migrate_to(engine, "head")
        assert _count(engine, "protocol_observations") == 4

    def test_rows_of_weeks_without_a_partition_are_inserted(
        self, model: SqlHistoryReadModel, engine: Engine
    ) -> None:
        times = [NOW - 3_000 * DAY, NOW, NOW + 400 * DAY]
        entries = [metric(i + 1, at, float(i)) for i, at in enumerate(times)]
        assert model.apply(batch(0, *entries, price(4, "coingecko:ethereum", 3.0, times[0])))
        assert [p.timestamp for p in model.series(SeriesQuery("aave")).points] == times
        assert model.prices.first(["coingecko:ethereum"])["coingecko:ethereum"].price == 3.0
        if engine.dialect.name == "postgresql":
            assert len(_partitions(engine, "protocol_observations")) == 3
            assert len(_partitions(engine, "price_observations")) == 1
            # The same weeks again: no new partition.
            assert model.apply(batch(4, metric(5, NOW + 1, 9.0)))
            assert len(_partitions(engine, "protocol_observations")) == 3

    def test_retention_drops_old_detail_and_keeps_recent_detail_and_rollups(
        self, model: SqlHistoryReadModel, engine: Engine
    ) -> None:
        old, recent = NOW - 100 * DAY, NOW - DAY
        model.apply(
            batch(
                0,
                metric(1, old, 1.0),
                metric(2, recent, 2.0),
                price(3, "coingecko:ethereum", 10.0, old),
                price(4, "coingecko:ethereum", 20.0, recent),
            )
        )
        assert model.detail_since() is None
        cutoff = NOW - 30 * DAY
        dropped = model.drop_detail_before(cutoff)
        assert dropped.horizon == cutoff
        assert model.detail_since() == cutoff
        if engine.dialect.name == "postgresql":
            assert (dropped.partitions, dropped.rows) == (2, 0)
            assert all(
                name.endswith(week_name(recent))
                for name in _partitions(engine, "price_observations")
            )
        else:
            assert (dropped.partitions, dropped.rows) == (0, 2)
        assert [p.value for p in model.series(SeriesQuery("aave")).points] == [2.0]
        assert model.prices.first(["coingecko:ethereum"])["coingecko:ethereum"].price == 20.0
        # The day closes (a rollup) of the dropped days stay.
        with engine.connect() as connection:
            days = connection.execute(select(func.count()).select_from(SERIES_DAYS)).scalar_one()
        assert days == 2
        # A late observation older than the horizon is not held as detail...
        assert model.apply(batch(4, metric(5, old + 60, 3.0)))
        assert [p.value for p in model.series(SeriesQuery("aave")).points] == [2.0]
        # ...nor expected by reconciliation, which compares from the horizon on.
        with model.snapshot() as snapshot:
            assert snapshot.detail_since == cutoff
            assert [row.position for row in snapshot.rows(0, 5)] == [2, 4]
        # The horizon never moves back; the model survives a reset (a rebuild) with it.
        assert model.drop_detail_before(cutoff - 10 * DAY).horizon == cutoff
        model.reset()
        assert model.detail_since() == cutoff

    def test_retention_with_nothing_to_drop(self, model: SqlHistoryReadModel) -> None:
        model.apply(batch(0, metric(1, NOW, 1.0)))
        dropped = model.drop_detail_before(NOW - 7 * DAY)
        assert (dropped.partitions, dropped.rows) == (0, 0)
        assert [p.value for p in model.series(SeriesQuery("aave")).points] == [1.0]


def week_name(at: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(week_of(at)))


def test_weeks_start_on_monday_at_midnight_utc() -> None:
    start = week_of(NOW)
    assert time.gmtime(start).tm_wday == 0
    assert start % DAY == 0
    assert start <= NOW < start + WEEK
    assert week_of(start) == start
    assert week_of(start - 1) == start - WEEK


class TestSqliteRetention(RetentionContract):
    @pytest.fixture
    def url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('retention') / 'history.db'}"


@pytest.mark.postgres
class TestPostgresRetention(RetentionContract):
    @pytest.fixture
    def url(self) -> Iterator[str]:
        with throwaway_schema("retention_test") as url:
            yield url
