"""Reconciliation against both backends: memory + SQLite and Redis + PostgreSQL.

One contract (``ReconciliationContract``), subclassed per backend: a clean store reports
nothing; a value changed by hand in the hot projection and a history row changed by hand
are both reported and repaired, and the next run reports nothing; an upstream that
differs is reported, never repaired. The log is a ``FakeEventLog`` over a list of entries
(the read models are the real adapters).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import pytest
from redis.asyncio import Redis
from sqlalchemy import update

from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.redis_hot_projection import RedisHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.adapters.sql_schema import PROTOCOL_OBSERVATIONS, create_sql_engine
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.ports import HotProjection
from defi_realtime.application.reconciliation import Reconciliation
from tests.services import redis_url, throwaway_schema

T0 = 1_700_000_000.0
HOUR = 3_600.0


class FakeEventLog:
    """An ``EventLog`` over a list of entries at positions 1..n."""

    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries

    def read(self, after: int, limit: int) -> LogBatch:
        chosen = tuple(e for e in self.entries if e.position > after)[:limit]
        return LogBatch(after, chosen[-1].position if chosen else after, chosen)

    def head(self) -> int:
        return self.entries[-1].position if self.entries else 0


class FakeUpstream:
    def __init__(self, tvl: dict[str, float]) -> None:
        self.tvl = tvl

    async def current_tvl(self) -> dict[str, float]:
        return dict(self.tvl)


def _entries() -> list[LogEntry]:
    entries: list[LogEntry] = []

    def add(kind: str, key: str, **data: object) -> None:
        entries.append(LogEntry(len(entries) + 1, kind, key, data, recorded_at=T0))

    for slug in ("aave", "lido", "curve"):
        add(
            "protocol_listed",
            slug,
            name=slug.title(),
            category="Dexes",
            chains=["Ethereum"],
            url="",
        )
    for hour in range(30):
        for index, slug in enumerate(("aave", "lido", "curve")):
            value = 1_000.0 * (index + 1) + 10.0 * hour
            add(
                "metric",
                slug,
                metric="tvl",
                chain="total",
                value=value,
                observed_at=T0 + hour * HOUR,
                source="t",
            )
            add(
                "metric",
                slug,
                metric="tvl",
                chain="Ethereum",
                value=value,
                observed_at=T0 + hour * HOUR,
                source="t",
            )
        add(
            "price",
            "coingecko:ethereum",
            price=2_000.0 + hour,
            observed_at=T0 + hour * HOUR,
            confidence=0.99,
        )
    # A protocol known only from its metrics (no listing row in the history).
    add("metric", "unlisted", metric="tvl", chain="total", value=5.0, observed_at=T0, source="t")
    return entries


class ReconciliationContract:
    """Subclasses provide ``hot`` (a projection) and ``history_url``."""

    hot: HotProjection

    async def corrupt_hot(self, slug: str) -> None:
        raise NotImplementedError

    @pytest.fixture
    async def stores(
        self, hot: HotProjection, history_url: str
    ) -> AsyncIterator[tuple[FakeEventLog, HotProjection, SqlHistoryReadModel]]:
        log = FakeEventLog(_entries())
        history = await asyncio.to_thread(SqlHistoryReadModel, history_url)
        batch = log.read(0, 10_000)
        await hot.apply(batch)
        await asyncio.to_thread(history.apply, batch)
        try:
            yield log, hot, history
        finally:
            await asyncio.to_thread(history.close)

    async def test_clean_store_reports_nothing(self, stores) -> None:  # type: ignore[no-untyped-def]
        log, hot, history = stores
        report = await Reconciliation(log, hot=hot, history=history).run()
        assert report.discrepancy_counts == {}, report.discrepancies
        assert report.compared["hot"] == 5  # four protocols, one token
        assert report.compared["history"] > len(log.entries)
        assert report.positions == {"hot": log.head(), "history": log.head()}
        assert report.repaired == {}

    async def test_drift_is_reported_and_repaired_then_clean(self, stores) -> None:  # type: ignore[no-untyped-def]
        log, hot, history = stores
        await self.corrupt_hot("lido")
        row = next(e for e in log.entries if e.kind == "metric" and e.key == "curve")
        engine = create_sql_engine(self.url)
        with engine.begin() as connection:
            connection.execute(
                update(PROTOCOL_OBSERVATIONS)
                .where(PROTOCOL_OBSERVATIONS.c.position == row.position)
                .values(value=123.0)
            )
        engine.dispose()

        first = await Reconciliation(log, hot=hot, history=history).run(repair=False)
        assert first.discrepancy_counts["hot"] == 1
        assert {d.key for d in first.discrepancies if d.store == "hot"} == {"protocol:lido"}
        history_keys = {d.key for d in first.discrepancies if d.store == "history"}
        assert f"row:{row.position}" in history_keys
        assert first.repaired == {}

        repairing = await Reconciliation(log, hot=hot, history=history).run()
        assert repairing.discrepancy_counts == first.discrepancy_counts
        assert repairing.repaired == {"hot": 1, "history": 1}

        after = await Reconciliation(log, hot=hot, history=history).run()
        assert after.discrepancy_counts == {}, after.discrepancies
        view = await hot.get_protocol("lido")
        assert view is not None
        assert view.tvl == 2_000.0 + 290.0

    async def test_a_store_behind_the_log_is_compared_where_it_is(self, stores) -> None:  # type: ignore[no-untyped-def]
        log, hot, history = stores
        last = log.entries[-1].position
        # Entries recorded after both read models' positions: not drift.
        log.entries.append(
            LogEntry(
                last + 1,
                "metric",
                "aave",
                {
                    "metric": "tvl",
                    "chain": "total",
                    "value": 1.0,
                    "observed_at": T0 + 99 * HOUR,
                    "source": "t",
                },
                T0,
            )
        )
        report = await Reconciliation(log, hot=hot, history=history).run()
        assert report.discrepancy_counts == {}, report.discrepancies
        assert report.positions == {"hot": last, "history": last}

    async def test_upstream_differences_are_reported_not_repaired(self, stores) -> None:  # type: ignore[no-untyped-def]
        log, hot, history = stores
        upstream = FakeUpstream({"aave": 1_290.0, "lido": 9_999.0, "elsewhere": 1.0})
        report = await Reconciliation(log, hot=hot, history=history, upstream=upstream).run()
        assert report.discrepancy_counts == {"upstream": 1}
        (difference,) = report.discrepancies
        assert (difference.key, difference.expected, difference.found) == (
            "protocol:lido",
            2_290.0,
            9_999.0,
        )
        assert report.compared["upstream"] == 2
        assert report.repaired == {}


class TestMemoryAndSqlite(ReconciliationContract):
    @pytest.fixture
    def hot(self) -> InMemoryHotProjection:
        self.hot = InMemoryHotProjection()
        return self.hot

    @pytest.fixture
    def history_url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        self.url = f"sqlite:///{tmp_path_factory.mktemp('reconcile') / 'history.db'}"
        return self.url

    async def corrupt_hot(self, slug: str) -> None:
        assert isinstance(self.hot, InMemoryHotProjection)
        views = self.hot.state.protocol_views
        views[slug] = replace(views[slug], tvl=1.0)


@pytest.mark.postgres
class TestRedisAndPostgres(ReconciliationContract):
    @pytest.fixture
    async def hot(self) -> AsyncIterator[RedisHotProjection]:
        self.client = Redis.from_url(redis_url())
        self.prefix = f"test:reconcile:{uuid.uuid4().hex}:"
        self.hot = RedisHotProjection(self.client, prefix=self.prefix)
        try:
            yield self.hot
        finally:
            await self.hot.reset()
            await self.client.aclose()

    @pytest.fixture
    def history_url(self) -> Iterator[str]:
        with throwaway_schema("reconcile_test") as url:
            self.url = url
            yield url

    async def corrupt_hot(self, slug: str) -> None:
        key = f"{self.prefix}protocol:{slug}"
        stored = json.loads(await self.client.get(key))
        for reading in stored["current"]:
            if reading[:2] == ["tvl", "total"]:
                reading[2] = 1.0
        await self.client.set(key, json.dumps(stored))
