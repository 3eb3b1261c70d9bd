"""Faults of a real deployment: killed workers, a flushed Redis, a broker that drops the
relay's connection, PostgreSQL connections killed mid-ingest.

Processes are real (``defi-realtime worker relay``, ``worker projections``, ``serve``,
``projections rebuild``) against PostgreSQL, Redis and RabbitMQ; see ``cluster.py``.

What "correct" means here, checked against the event log itself:

* the Redis hot projection equals a plain fold of the log (current value of every
  (protocol, metric, chain): the latest ``observed_at``, ties to the later position), and
  its TVL ranking is ordered accordingly;
* the history read model holds exactly one row per metric entry of the log;
* a fan-out consumer (an in-test ``RabbitEventFanout`` listener on the same exchange) saw
  every log position after the relay's starting point exactly once after dropping
  duplicates by position, and every entry as the log has it: the fan-out alone, with no
  gap filling from the log (which our own node followers would do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from defi_realtime.adapters.rabbit_fanout import RabbitEventFanout
from defi_realtime.adapters.redis_hot_projection import RedisHotProjection
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import IngestResult, build_batch
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.views import ProtocolQuery
from tests.integration.cluster import (
    PROJECTIONS_LOCK_KEY,
    RELAY_LOCK_KEY,
    Process,
    Stack,
    connection_pids,
    fold_current,
    lock_holder,
    rabbitmqctl,
    rabbitmqctl_command,
    read_log,
    stack,
    wait_until,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(150),
]

T0 = 1_700_000_000
PROTOCOLS = tuple(f"fault-{index:02d}" for index in range(20))
READINGS = (
    ("tvl", "total"),
    ("tvl", "total"),
    ("tvl", "ethereum"),
    ("tvl", "arbitrum"),
    ("volume_24h", "total"),
    ("fees_24h", "total"),
)
SETTLE_TIMEOUT = 45.0
ELECTION_TIMEOUT = 20.0


# --------------------------------------------------------------------------- workload


def observation_batches(rng: random.Random, batches: int, size: int) -> Iterator[list[Any]]:
    """Batches of observations: the first lists every protocol; then random readings whose
    ``observed_at`` often repeats (ties) or lies behind the current one (late data)."""
    yield [
        {
            "protocol": slug,
            "name": slug.upper(),
            "category": "Lending" if index % 2 else "Dexes",
            "metric": "tvl",
            "chain": "total",
            "value": float(index),
            "observed_at": T0,
        }
        for index, slug in enumerate(PROTOCOLS)
    ]
    for _ in range(batches - 1):
        batch = []
        for _ in range(size):
            metric, chain = rng.choice(READINGS)
            batch.append(
                {
                    "protocol": rng.choice(PROTOCOLS),
                    "metric": metric,
                    "chain": chain,
                    "value": round(rng.uniform(0, 1e9), 2),
                    "observed_at": T0 + 60 * rng.randrange(400),
                }
            )
        yield batch


def ingest(app: DefiRealtime, observations: list[Any]) -> IngestResult:
    """Write one batch straight through the application (what the ingest writer does)."""
    batch = build_batch(observations)
    assert not batch.rejected, batch.rejected
    [result] = app.ingest([batch])
    assert result.committed
    return result


# --------------------------------------------------------------------------- consumer


class Consumer:
    """A fan-out listener that keeps every batch it is handed, duplicates included."""

    def __init__(self) -> None:
        self.batches: list[LogBatch] = []

    async def __call__(self, batch: LogBatch) -> None:
        self.batches.append(batch)

    def covered(self, start: int) -> int:
        """How far the batches cover the log contiguously from ``start``."""
        position = start
        for batch in sorted(self.batches, key=lambda b: (b.after, b.last)):
            if batch.last <= position:
                continue
            if batch.after > position:
                break
            position = batch.last
        return position

    def assert_saw_exactly(self, start: int, head: int, log_entries: list[LogEntry]) -> int:
        """Every position in (start, head] covered, every entry seen as the log has it, once
        after dedupe; returns how many duplicate entries were dropped."""
        assert self.covered(start) >= head
        seen: dict[int, LogEntry] = {}
        duplicates = 0
        for batch in self.batches:
            for entry in batch.entries:
                if entry.position in seen:
                    duplicates += 1
                    assert seen[entry.position] == entry, "a redelivery differs"
                else:
                    seen[entry.position] = entry
        expected = {e.position: e for e in log_entries if start < e.position <= head}
        received = {p: e for p, e in seen.items() if start < p <= head}
        missing = sorted(expected.keys() - received.keys())
        unexpected = sorted(received.keys() - expected.keys())
        assert not missing, f"{len(missing)} log entries never reached the consumer: {missing[:5]}"
        assert not unexpected, f"entries that are not in the log: {unexpected[:5]}"
        assert received == expected
        return duplicates


@contextlib.asynccontextmanager
async def consumer_on(deployment: Stack) -> AsyncIterator[Consumer]:
    fanout = RabbitEventFanout(
        deployment.amqp_url,
        exchange=deployment.exchange,
        node_id=f"consumer-{deployment.database}",
        reconnect_interval=0.5,
    )
    consumer = Consumer()
    fanout.listen(consumer)
    await fanout.start()
    try:
        yield consumer
    finally:
        await fanout.stop()


async def wait_relay_started_at(deployment: Stack, start: int) -> None:
    """The relay stored its starting point (the log head when it first started).

    Everything after it must reach the fan-out even if the relay is killed before its
    first publish: a restarted relay resumes from the stored position instead of jumping
    to the head of the moment, which would skip what was committed in between."""
    await wait_until(
        lambda: asyncio.to_thread(deployment.relay_position),
        lambda position: position == start,
        ELECTION_TIMEOUT,
        f"relay started at {start}",
    )


# --------------------------------------------------------------------------- checks


async def assert_projections_equal_fold(deployment: Stack, app: DefiRealtime) -> int:
    """The hot projection and the history read model against the event log; returns head."""
    head, entries = await asyncio.to_thread(read_log, app)
    expected = fold_current(entries)
    slugs = sorted({e.key for e in entries if e.kind in ("metric", "protocol_listed")})
    client = deployment.redis()
    try:
        hot = RedisHotProjection(client, deployment.redis_prefix)
        assert await hot.position() == head
        views = {view.slug: view for view in await hot.get_protocols(slugs)}
        assert sorted(views) == slugs
        for slug in slugs:
            current = expected.get(slug, {})
            view = views[slug]
            assert view.tvl == current.get(("tvl", "total")), slug
            assert view.volume_24h == current.get(("volume_24h", "total")), slug
            assert view.fees_24h == current.get(("fees_24h", "total")), slug
            assert view.chain_tvls == {
                chain: value
                for (metric, chain), value in current.items()
                if metric == "tvl" and chain != "total"
            }, slug
        page = await hot.list_protocols(ProtocolQuery(limit=len(slugs) + 10))
        assert page.total == len(slugs)
        ranked = sorted(
            slugs,
            key=lambda s: (views[s].tvl is None, -(views[s].tvl or 0.0), s),
        )
        assert [view.slug for view in page.items] == ranked
    finally:
        await client.aclose()

    rows = await asyncio.to_thread(
        deployment.query,
        "SELECT position, protocol, metric, chain, value, observed_at "
        "FROM protocol_observations ORDER BY position",
    )
    expected_rows = [
        (
            e.position,
            e.key,
            e.data["metric"],
            e.data["chain"],
            float(e.data["value"]),
            float(e.data["observed_at"]),
        )
        for e in entries
        if e.kind == "metric"
    ]
    assert len(rows) == len(expected_rows), "history rows vs metric entries of the log"
    assert [tuple(row) for row in rows] == expected_rows
    assert deployment.history_position() == head
    return head


async def settled(deployment: Stack, head: int, consumer: Consumer | None, start: int) -> None:
    """Wait until the relay, both shared projections and the consumer reach ``head``."""

    async def positions() -> dict[str, int]:
        found = {
            "relay": await asyncio.to_thread(deployment.relay_position),
            "hot": await deployment.hot_position(),
            "history": await asyncio.to_thread(deployment.history_position),
        }
        if consumer is not None:
            found["consumer"] = consumer.covered(start)
        return found

    await wait_until(
        positions,
        lambda found: all(value >= head for value in found.values()),
        SETTLE_TIMEOUT,
        f"everything at the log head {head}",
    )


async def wait_elected(deployment: Stack, key: int, name: str) -> None:
    await wait_until(
        lambda: asyncio.to_thread(lock_holder, deployment, key),
        lambda holder: holder == name,
        ELECTION_TIMEOUT,
        f"{name} elected",
    )


def assert_no_crash(process: Process) -> None:
    """The worker is alive and logged no traceback (being killed is not a crash)."""
    assert process.alive(), process.output()
    output = process.output(tail=1_000_000)
    assert "Traceback" not in output, output


# --------------------------------------------------------------------------- tests


async def test_killing_workers_while_streaming_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """SIGKILL the relay and the projection worker at random points while ~3,000
    observations stream in, restart them; then everything equals the fold of the log.

    No ``serve`` node here: a serve node contends for the relay and projections locks too,
    and whichever process got them would have to be the one killed. With only the two
    workers, each lock has exactly one candidate, so every kill hits the active relay or
    projector. Observations are written through the application in this process instead
    (what a node's ingest writer does; the REST path is exercised by the last test)."""
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1_000_000))
    print(f"random seed {seed} (set FAULT_SEED to replay the same kill schedule)")
    rng = random.Random(seed)
    batches = list(observation_batches(rng, batches=60, size=50))
    async with stack(tmp_path / "stack") as deployment:
        app = deployment.app()
        await asyncio.to_thread(ingest, app, batches[0])
        start = await asyncio.to_thread(lambda: read_log(app)[0])
        async with consumer_on(deployment) as consumer:
            workers = {
                "relay": deployment.worker("relay-0", "relay"),
                "projections": deployment.worker("projections-0", "projections"),
            }
            await wait_relay_started_at(deployment, start)
            await wait_elected(deployment, PROJECTIONS_LOCK_KEY, "projections-0")
            chaos_done = asyncio.Event()
            kills: list[str] = []

            async def chaos() -> None:
                try:
                    for round_ in range(1, 4):
                        await asyncio.sleep(rng.uniform(0.2, 1.0))
                        roles = rng.sample(sorted(workers), 2)
                        for role in roles:
                            workers[role].kill9()
                            kills.append(f"{role} (round {round_})")
                            await asyncio.sleep(rng.uniform(0.0, 0.4))
                        await asyncio.sleep(rng.uniform(0.0, 0.5))
                        for role in roles:
                            workers[role] = deployment.worker(f"{role}-{round_}", role)
                        # Let the new ones get to work before the next round kills them.
                        await wait_elected(deployment, RELAY_LOCK_KEY, f"relay-{round_}")
                        await wait_elected(
                            deployment, PROJECTIONS_LOCK_KEY, f"projections-{round_}"
                        )
                finally:
                    chaos_done.set()

            async def stream() -> None:
                for index, observations in enumerate(batches[1:], start=1):
                    await asyncio.to_thread(ingest, app, observations)
                    if index == len(batches) - 10:
                        # Keep the stream going until every kill has happened.
                        await asyncio.wait_for(chaos_done.wait(), 60)
                    await asyncio.sleep(0.1)

            await asyncio.gather(chaos(), stream())
            assert len(kills) == 6, kills

            head = await asyncio.to_thread(lambda: read_log(app)[0])
            await settled(deployment, head, consumer, start)
            _, entries = await asyncio.to_thread(read_log, app)
            duplicates = consumer.assert_saw_exactly(start, head, entries)
            print(f"kills: {kills}; duplicate entries dropped by the consumer: {duplicates}")
            assert await assert_projections_equal_fold(deployment, app) == head
            for process in workers.values():
                assert_no_crash(process)


async def test_rebuild_restores_a_flushed_redis(tmp_path: Path) -> None:
    """Redis flushed -> ``projections rebuild`` restores it; flushed again, the running
    projection worker notices the gap on the next batch and catches up on its own."""
    rng = random.Random(7)
    batches = list(observation_batches(rng, batches=12, size=50))
    async with stack(tmp_path / "stack") as deployment:
        app = deployment.app()
        relay = deployment.worker("relay-0", "relay")
        projections = deployment.worker("projections-0", "projections")
        await wait_elected(deployment, RELAY_LOCK_KEY, "relay-0")
        await wait_elected(deployment, PROJECTIONS_LOCK_KEY, "projections-0")
        for observations in batches[:-1]:
            await asyncio.to_thread(ingest, app, observations)
        head = await asyncio.to_thread(lambda: read_log(app)[0])
        await settled(deployment, head, None, 0)
        await assert_projections_equal_fold(deployment, app)

        assert await deployment.delete_redis_keys() > 0
        assert await deployment.hot_position() == 0
        await deployment.run("rebuild", "projections", "rebuild")
        assert await assert_projections_equal_fold(deployment, app) == head

        assert await deployment.delete_redis_keys() > 0
        await asyncio.to_thread(ingest, app, batches[-1])
        head = await asyncio.to_thread(lambda: read_log(app)[0])
        await settled(deployment, head, None, 0)
        assert await assert_projections_equal_fold(deployment, app) == head
        assert_no_crash(relay)
        assert_no_crash(projections)


async def test_relay_reconnects_after_the_broker_closes_its_connection(tmp_path: Path) -> None:
    """``rabbitmqctl close_connection`` on the relay's connection: it reconnects and
    resumes from its stored position; the consumer still receives everything."""
    rabbitmqctl_command()
    rng = random.Random(11)
    batches = list(observation_batches(rng, batches=30, size=20))
    async with stack(tmp_path / "stack") as deployment:
        app = deployment.app()
        await asyncio.to_thread(ingest, app, batches[0])
        start = await asyncio.to_thread(lambda: read_log(app)[0])
        async with consumer_on(deployment) as consumer:
            relay = deployment.worker("relay-0", "relay")
            projections = deployment.worker("projections-0", "projections")
            await wait_relay_started_at(deployment, start)
            connection_name = f"defi-realtime:{deployment.exchange}:relay-0"
            pids = await wait_until(
                lambda: connection_pids(connection_name), bool, 15.0, "relay connection"
            )
            [pid] = pids

            for observations in batches[1:10]:
                await asyncio.to_thread(ingest, app, observations)
                await asyncio.sleep(0.05)
            await rabbitmqctl("close_connection", pid, "integration test: broker-side close")
            for observations in batches[10:]:
                await asyncio.to_thread(ingest, app, observations)
                await asyncio.sleep(0.1)

            head = await asyncio.to_thread(lambda: read_log(app)[0])
            await settled(deployment, head, consumer, start)
            _, entries = await asyncio.to_thread(read_log, app)
            consumer.assert_saw_exactly(start, head, entries)
            # The same process is still the relay, on a new connection.
            assert relay.alive()
            assert lock_holder(deployment, RELAY_LOCK_KEY) == "relay-0"
            new_pids = await connection_pids(connection_name)
            assert new_pids, "the relay has no connection to the broker"
            assert pid not in new_pids
            assert await assert_projections_equal_fold(deployment, app) == head
            assert projections.alive()


async def test_postgres_connections_killed_mid_ingest_never_commit_a_partial_batch(
    tmp_path: Path,
) -> None:
    """PostgreSQL going away mid-ingest: every POST either succeeds (all 50 observations are
    in the log) or fails with a clear 5xx error (none are); the server works afterwards.

    Restarting the PostgreSQL cluster itself would break every other test and session
    sharing this machine's server, so the outage is simulated the way a restart looks to
    the server's sessions: ``pg_terminate_backend`` on every connection to this test's own
    database, in a loop, while batches are POSTed."""
    rng = random.Random(5)
    async with stack(tmp_path / "stack") as deployment:
        key = await deployment.create_key()
        node = await deployment.serve("node-0")
        terminated = 0
        stop = asyncio.Event()

        async def terminate_backends() -> None:
            """Outages of a few seconds (every session killed as soon as it appears: longer
            than the store's own retries last), with quiet spells in between."""
            nonlocal terminated
            loop = asyncio.get_running_loop()
            async with await psycopg.AsyncConnection.connect(
                deployment.admin_url, autocommit=True, connect_timeout=5
            ) as conn:
                while not stop.is_set():
                    outage_ends = loop.time() + rng.uniform(1.5, 4.0)
                    while not stop.is_set() and loop.time() < outage_ends:
                        cursor = await conn.execute(
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                            "FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()",
                            (deployment.database,),
                        )
                        row = await cursor.fetchone()
                        terminated += int(row[0]) if row else 0
                        await asyncio.sleep(0.02)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), rng.uniform(0.3, 1.0))

        outcomes: dict[int, int] = {}

        def observations(index: int) -> list[dict[str, Any]]:
            return [
                {
                    "protocol": f"pg-{index:03d}",
                    "name": f"PG {index}",
                    "metric": "tvl",
                    "chain": "total",
                    "value": float(item),
                    "observed_at": T0 + item,
                }
                for item in range(50)
            ]

        async def post(client: httpx.AsyncClient, index: int) -> httpx.Response:
            # A transport error (no HTTP answer at all) fails the test: every request gets
            # an answer, a 5xx one when the database is away.
            response = await client.post(
                "/v2/ingest",
                json={"observations": observations(index)},
                headers={"X-API-Key": key},
            )
            body = response.json()
            if response.status_code >= 500:
                assert set(body) == {"error"}, body
                assert body["error"]["code"], body
            else:
                assert response.status_code == 200, response.text
                # Duplicates: the write was retried after an attempt that had committed.
                assert body["accepted"] + body["duplicates"] == 50, body
            return response

        async def post_batches(client: httpx.AsyncClient, indexes: range) -> None:
            for index in indexes:
                outcomes[index] = (await post(client, index)).status_code

        def written_per_batch() -> dict[int, int]:
            _, entries = read_log(app)
            counts = dict.fromkeys(outcomes, 0)
            for entry in entries:
                if entry.kind == "metric" and entry.key.startswith("pg-"):
                    counts[int(entry.key.removeprefix("pg-"))] += 1
            return counts

        app = deployment.app()
        async with httpx.AsyncClient(base_url=node.base_url, timeout=30.0) as client:
            terminator = asyncio.create_task(terminate_backends())
            try:
                await asyncio.sleep(0.2)
                # Three concurrent clients: the server's writer commits their batches in
                # groups, and a failed group must fail every batch in it.
                await asyncio.gather(
                    *(post_batches(client, range(lane, 60, 3)) for lane in range(3))
                )
            finally:
                stop.set()
                await asyncio.wait_for(terminator, 10)
            assert terminated > 0

            written = await asyncio.to_thread(written_per_batch)
            failed = sorted(index for index, status in outcomes.items() if status != 200)
            # A 5xx whose batch is in the log: the connection died while the COMMIT was in
            # flight and stayed down longer than the store's retries, so the server could
            # not learn the outcome. No server can rule that out; what holds is that the
            # batch is all there or not at all, and that the client may simply retry.
            unknown = [index for index in failed if written[index] == 50]
            print(
                f"terminated {terminated} backends; {len(outcomes) - len(failed)} of "
                f"{len(outcomes)} POSTs succeeded; {len(unknown)} failed ones had committed"
            )
            for index, status in sorted(outcomes.items()):
                assert written[index] in (0, 50), f"batch {index} ({status}) is partial"
                if status == 200:
                    assert written[index] == 50, (index, status, written[index])

            # The server works again, and retrying a failed batch is safe (idempotent):
            # it records the batch once, or finds it already there.
            for index in failed:
                response = await post(client, index)
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["accepted"] == (0 if index in unknown else 50), (index, body)
            written = await asyncio.to_thread(written_per_batch)
            assert set(written.values()) == {50}, written

            head = await asyncio.to_thread(lambda: read_log(app)[0])
            await wait_until(
                lambda: client.get("/health"),
                lambda r: r.json().get("node_position") == r.json().get("hot_position") == head,
                SETTLE_TIMEOUT,
                "the node caught up",
            )
            await settled(deployment, head, None, 0)
            assert await assert_projections_equal_fold(deployment, app) == head
            assert node.alive()
