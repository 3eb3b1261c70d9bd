"""Property tests: bounded aggregates decide duplicates as the unbounded ones did.

A Protocol or Token keeps a window of each series' newest observations; a repeat older than
that is asked of the stored events (docs/adr/0045-bounded-aggregates-and-snapshots.md). The
reference here is the old rule written out plainly: an observation is a duplicate iff the
value last recorded for its (aggregate, series, time) is the same. Random groups of batches
(re-imports of old data, late and out-of-order observations, corrections), with restarts
(a cold cache: aggregates come back from snapshots taken every few events) in between, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import make_url

from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from defi_realtime.domain.protocol import Protocol
from defi_realtime.domain.recent import RECENT_PER_SERIES
from defi_realtime.domain.token import Token
from defi_realtime.entrypoints.settings import Settings
from tests.services import postgres_url, throwaway_schema

T0 = 1_700_000_000.0
# More times than a window holds, so series overflow it and old times come back.
TIMES = [T0 + 60.0 * i for i in range(RECENT_PER_SERIES + 4)]
VALUES = [1.0, 2.0, 3.0]


class SnapshottingOften(DefiRealtime):
    """The application with a snapshot every 3 events, so examples load from snapshots."""

    name = "DefiRealtime"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {Protocol: 3, Token: 3}


observation = st.tuples(
    st.just("metric"),
    st.sampled_from([0, 0, 0, 1]),  # protocol
    # Mostly one series, so it overflows its window within an example.
    st.sampled_from(["tvl", "tvl", "tvl", "fees_24h"]),
    st.sampled_from(["total", "total", "total", "ethereum"]),
    st.sampled_from(TIMES),
    st.sampled_from(VALUES),
)
price = st.tuples(
    st.just("price"),
    st.integers(0, 1),
    st.just(""),
    st.just(""),
    st.sampled_from(TIMES),
    st.sampled_from(VALUES),
)
batch = st.lists(st.one_of(observation, observation, price), min_size=1, max_size=12)
# A backfill: every time of one series, in some order (overflows its window at once).
backfill = st.builds(
    lambda times, value, what: [[(what, 0, "tvl", "total", t, value) for t in times]],
    st.permutations(TIMES),
    st.sampled_from(VALUES),
    st.sampled_from(["metric", "price"]),
)
step = st.one_of(
    st.tuples(st.just("group"), st.lists(batch, min_size=1, max_size=3)),
    st.tuples(st.just("group"), backfill),
    st.tuples(st.just("restart"), st.just([])),
)
steps = st.lists(step, min_size=3, max_size=10)

_examples = itertools.count()


def run(app: DefiRealtime, plan: list[tuple[str, list[list[tuple[Any, ...]]]]]) -> None:
    """Ingest ``plan`` and compare every batch's counts with the unbounded rule."""
    run_id = next(_examples)
    slug = [f"p{run_id}-{i}" for i in range(2)]
    token = [f"coingecko:t{run_id}-{i}" for i in range(2)]
    last: dict[tuple[Any, ...], float] = {}
    beyond = 0
    for kind, group in plan:
        if kind == "restart":
            cache = app.repository.cache
            assert cache is not None
            for aggregate_id in [*map(Protocol.id_for, slug), *map(Token.id_for, token)]:
                with contextlib.suppress(KeyError):
                    cache.get(aggregate_id, evict=True)
            continue
        batches, expected = [], []
        for items in group:
            observations, prices = [], []
            accepted = 0
            for what, n, metric, chain, stamp, value in items:
                key: tuple[Any, ...]
                if what == "metric":
                    observations.append(
                        {
                            "protocol": slug[n],
                            "name": f"P {n}",
                            "metric": metric,
                            "chain": chain,
                            "observed_at": stamp,
                            "value": value,
                        }
                    )
                    key = (slug[n], metric, chain.capitalize() if chain != "total" else chain)
                else:
                    prices.append({"token": token[n], "price": value, "observed_at": stamp})
                    key = (token[n],)
                newer = [t for k, t in ((k[:-1], k[-1]) for k in last) if k == key and t > stamp]
                beyond += len(set(newer)) >= RECENT_PER_SERIES
                if last.get((*key, stamp)) != value:
                    accepted += 1
                    last[(*key, stamp)] = value
            batches.append(build_batch(observations, prices))
            expected.append((accepted, len(items) - accepted))
        results = app.ingest(batches)
        assert [(r.accepted, r.duplicates) for r in results] == expected
        assert all(r.committed and not r.rejected for r in results)
    event(f"observations beyond the window: {'some' if beyond else 'none'}")

    # Every aggregate, loaded from its latest snapshot and the events after it, equals the
    # one replayed from all its events (snapshots carry the same bounded state).
    for aggregate_id in [*map(Protocol.id_for, slug), *map(Token.id_for, token)]:
        stored = list(app.events.get(aggregate_id))
        if not stored:
            continue
        replayed: Any = None
        for domain_event in stored:
            replayed = domain_event.mutate(replayed)
        loaded = app.repository.get(aggregate_id, version=2**62)
        keep = ("recent", "horizon", "current", "price", "observed_at", "chains")
        assert {k: v for k, v in vars(loaded).items() if k in keep} == {
            k: v for k, v in vars(replayed).items() if k in keep
        }
        assert loaded.version == replayed.version


PROPERTY = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def sqlite_app() -> Iterator[DefiRealtime]:
    with tempfile.TemporaryDirectory() as directory:
        app = SnapshottingOften(env=Settings(data_dir=Path(directory)).event_store_env)
        try:
            yield app
        finally:
            app.close()


@pytest.fixture(scope="module")
def postgres_app() -> Iterator[DefiRealtime]:
    postgres_url()  # skips (fails under CI=true) without PostgreSQL
    with throwaway_schema("bounded") as url:
        options = make_url(url).query["options"]
        schema = str(options).removeprefix("-csearch_path=")
        env = Settings(database_url=postgres_url()).event_store_env
        app = SnapshottingOften(env={**env, "POSTGRES_SCHEMA": schema})
        try:
            yield app
        finally:
            app.close()


@PROPERTY
@given(plan=steps)
def test_bounded_sqlite_decides_as_the_unbounded_rule(
    sqlite_app: DefiRealtime, plan: list[Any]
) -> None:
    run(sqlite_app, plan)


@PROPERTY
@given(plan=steps)
def test_bounded_postgres_decides_as_the_unbounded_rule(
    postgres_app: DefiRealtime, plan: list[Any]
) -> None:
    run(postgres_app, plan)
