"""Property tests: replaying stored events rebuilds the same aggregates, projections equal
a plain recomputation from the accepted observations, and ingest is idempotent.

The expected values are computed here, from first principles, without the code under test:
the current value of a series is the value at its greatest ``observed_at`` (ties: the last
recorded), and its history is every distinct ``observed_at`` with its last recorded value.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.following import ProjectionRunner
from defi_realtime.application.ingest import IngestResult, build_batch
from defi_realtime.application.views import CHANGE_WINDOWS, SeriesPoint, SeriesQuery
from defi_realtime.domain.alert_rule import AlertRule
from defi_realtime.domain.errors import DomainError, InvalidTransition
from defi_realtime.domain.protocol import Protocol
from defi_realtime.domain.recent import RECENT_PER_SERIES, Series
from defi_realtime.domain.token import Token

T0 = 1_700_000_000.0
# Small pools, so that repeats, late arrivals and same-timestamp corrections are common;
# the spread covers the 1h, 1d and 7d change windows.
TIMES = [T0 + offset for offset in (0, 1_800, 3_600, 5_400, 7_200, 43_200, 86_400, 90_000, 604_800)]
VALUES = [0.0, 1.0, 2.5, 100.0, 1e9]

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def sqlite_env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory() as directory:
        yield {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(Path(directory) / "events.db"),
        }


def public_state(aggregate: Any) -> dict[str, Any]:
    state = {k: v for k, v in vars(aggregate).items() if not k.startswith("_")}
    state["@type"] = type(aggregate)
    state["@id"] = aggregate.id
    state["@version"] = aggregate.version
    state["@created_on"] = aggregate.created_on
    state["@modified_on"] = aggregate.modified_on
    return state


def expected_current(history: dict[Any, float], series: tuple[Any, ...]) -> float | None:
    """The value at the greatest observed_at of ``series`` (history keys end with it)."""
    stamps = [key[-1] for key in history if key[:-1] == series]
    return None if not stamps else history[(*series, max(stamps))]


# --- (a) replaying commands ---------------------------------------------------------------

# Spellings of chains as clients send them, and the one name the domain keeps for each.
SPELLINGS = {
    "total": "total",
    "ethereum": "Ethereum",
    "Ethereum ": "Ethereum",
    "arbitrum": "Arbitrum",
    "Arbitrum One": "Arbitrum",
}

protocol_commands = st.one_of(
    st.tuples(
        st.just("metric"),
        st.sampled_from(["tvl", "volume_24h"]),
        st.sampled_from(list(SPELLINGS)),
        st.sampled_from(VALUES),
        st.sampled_from(TIMES),
        st.sampled_from(["", "llama"]),
    ),
    st.tuples(
        st.just("details"),
        st.sampled_from([None, "Aave", "Aave V3"]),
        st.sampled_from([None, "", "Lending", "Dexes"]),
        st.sampled_from([None, [], ["ethereum"], ["base", "ethereum"]]),
        st.sampled_from([None, "", "https://aave.com"]),
    ),
    # Invalid observations: refused, and must leave no event behind.
    st.tuples(
        st.just("metric"),
        st.just("tvl"),
        st.just("total"),
        st.sampled_from([math.nan, -1.0, math.inf]),
        st.sampled_from(TIMES),
        st.just(""),
    ),
)
token_commands = st.tuples(
    st.just("price"),
    st.sampled_from(VALUES),
    st.sampled_from(TIMES),
    st.sampled_from([None, 0.0, 0.5, 1.0, 1.5]),
)
rule_commands = st.one_of(
    st.sampled_from([("pause",), ("resume",), ("delete",)]),
    st.tuples(
        st.just("update"),
        st.sampled_from([None, 0, 60, 3_600]),
        st.sampled_from([None, "renamed"]),
    ),
    st.tuples(
        st.just("observe"),
        st.sampled_from([1.0, 5e8, 1e9, 2e9, math.nan]),
        st.sampled_from(TIMES),
    ),
)
command_sequences = st.lists(
    st.one_of(
        st.tuples(st.just("protocol"), protocol_commands),
        st.tuples(st.just("token"), token_commands),
        st.tuples(st.just("rule"), rule_commands),
        st.just(("save", ())),
    ),
    max_size=40,
)


@dataclass
class SeriesModel:
    """Recorded observations keyed by (..., observed_at) -> last value."""

    history: dict[tuple[Any, ...], float] = field(default_factory=dict)

    def record(self, key: tuple[Any, ...], value: float) -> bool:
        """Whether an observation is new (else an identical repeat)."""
        if key in self.history and self.history[key] == value:
            return False
        self.history[key] = value
        return True

    def value(self, aggregate_id: Any, series: Series, observed_at: float) -> float | None:
        """As the store answers beyond an aggregate's window (``StoredObservations``): the
        model holds every observation recorded (a token's keys are its times alone)."""
        key = (observed_at,) if series == ("price", "") else (*series, observed_at)
        return self.history.get(key)

    def window(self, series: tuple[Any, ...]) -> tuple[dict[float, float], float | None]:
        """What the aggregate keeps of ``series``: its newest times, and the next one."""
        stamps = sorted((key[-1] for key in self.history if key[:-1] == series), reverse=True)
        kept = {stamp: self.history[(*series, stamp)] for stamp in stamps[:RECENT_PER_SERIES]}
        return kept, (stamps[RECENT_PER_SERIES] if len(stamps) > RECENT_PER_SERIES else None)


def run_protocol_command(protocol: Protocol, model: SeriesModel, command: tuple[Any, ...]) -> None:
    if command[0] == "metric":
        _, metric, chain, value, observed_at, source = command
        if not math.isfinite(value) or value < 0:
            before = len(protocol.pending_events)
            try:
                protocol.record_metric(metric, chain, value, observed_at, source)
            except DomainError:
                assert len(protocol.pending_events) == before
                return
            raise AssertionError(f"invalid value {value!r} was accepted")
        recorded = protocol.record_metric(metric, chain, value, observed_at, source, model)
        assert recorded is model.record((metric, SPELLINGS[chain], observed_at), value)
    else:
        _, name, category, chains, url = command
        protocol.update_details(name=name, category=category, chains=chains, url=url)


def run_token_command(token: Token, model: SeriesModel, command: tuple[Any, ...]) -> None:
    _, price, observed_at, confidence = command
    if confidence is not None and confidence > 1:
        before = len(token.pending_events)
        try:
            token.record_price(price, observed_at, confidence)
        except DomainError:
            assert len(token.pending_events) == before
            return
        raise AssertionError("confidence above 1 was accepted")
    recorded = token.record_price(price, observed_at, confidence, stored=model)
    assert recorded is model.record((observed_at,), price)


def run_rule_command(rule: AlertRule, command: tuple[Any, ...]) -> None:
    name = command[0]
    allowed = {
        "pause": rule.state == "active",
        "resume": rule.state == "paused",
        "delete": rule.state != "deleted",
        "update": rule.state != "deleted",
        "observe": True,
    }[name]
    before = len(rule.pending_events)
    try:
        if name == "update":
            rule.update(cooldown=command[1], name=command[2])
        elif name == "observe":
            rule.observe(command[1], command[2])
        else:
            getattr(rule, name)()
    except InvalidTransition:
        assert not allowed, f"{name} refused in state {rule.state}"
        assert len(rule.pending_events) == before
        return
    assert allowed, f"{name} allowed in state {rule.state}"


@PROPERTY_SETTINGS
@given(commands=command_sequences)
def test_stored_events_rebuild_the_same_aggregates(
    commands: list[tuple[str, tuple[Any, ...]]],
) -> None:
    protocol = Protocol.create("aave-v3", "Aave V3", category="Lending", chains=["ethereum"])
    token = Token.register("coingecko:ethereum")
    rule = AlertRule.create(
        "alice",
        {"protocol": "aave-v3"},
        {"kind": "threshold", "direction": "below", "value": 1e9},
        [{"kind": "webhook", "url": "https://example.com/hook"}],
        cooldown=600,
    )
    protocol_model, token_model = SeriesModel(), SeriesModel()

    with sqlite_env() as env:
        writer = DefiRealtime(env=env)
        try:
            for target, command in commands:
                if target == "protocol":
                    run_protocol_command(protocol, protocol_model, command)
                elif target == "token":
                    run_token_command(token, token_model, command)
                elif target == "rule":
                    run_rule_command(rule, command)
                else:
                    writer.save(protocol, token, rule)
            writer.save(protocol, token, rule)
        finally:
            writer.close()

        # The aggregates agree with the plain model of their observations...
        for metric, chain, _ in protocol_model.history:
            value = expected_current(protocol_model.history, (metric, chain))
            assert protocol.current_value(metric, chain) == value
            window, horizon = protocol_model.window((metric, chain))
            assert protocol.recent[(metric, chain)] == window
            assert protocol.horizon.get((metric, chain)) == horizon
        assert (token.recent, token.horizon) == token_model.window(())
        assert token.price == expected_current(token_model.history, ())

        # ...and a fresh application reading the same store rebuilds them exactly.
        reader = DefiRealtime(env=env)
        try:
            for original in (protocol, token, rule):
                rebuilt = reader.repository.get(original.id)
                assert public_state(rebuilt) == public_state(original)
        finally:
            reader.close()


# --- (b) projections equal a recomputation ------------------------------------------------

SLUGS = ["aave", "uni", "curve"]
TOKENS = ["coingecko:ethereum", "chain:0xabc"]
CATEGORIES = ["Lending", "Dexes"]
CATEGORY_OF = {"aave": "Lending", "uni": "Dexes", "curve": "Dexes"}


@dataclass(frozen=True)
class Obs:
    slug: str
    metric: str
    chain: str
    value: float
    observed_at: float
    iso: bool
    category: str | None  # None: no listing details on the item
    bad: str | None = None  # why the item is malformed, if it is

    def raw(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "protocol": self.slug,
            "metric": self.metric,
            "chain": self.chain,
            "value": self.value,
            "observed_at": (
                datetime.fromtimestamp(self.observed_at, UTC).isoformat()
                if self.iso
                else self.observed_at
            ),
        }
        if self.category is not None:
            raw["name"] = self.slug.title()
            raw["category"] = self.category
        if self.bad == "nan":
            raw["value"] = math.nan
        elif self.bad == "negative":
            raw["value"] = -1.0
        elif self.bad == "field":
            raw["extra"] = True
        return raw


@dataclass(frozen=True)
class Price:
    token: str
    price: float
    observed_at: float
    bad: bool = False

    @property
    def confidence(self) -> float | None:
        # A function of the price, so an identical repeat is identical in every field.
        return None if self.price >= 100 else 0.5

    def raw(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "price": self.price,
            "observed_at": self.observed_at,
            "confidence": 2.0 if self.bad else self.confidence,
        }


@dataclass(frozen=True)
class Batch:
    observations: tuple[Obs, ...]
    prices: tuple[Price, ...]
    partial: bool

    def build(self) -> Any:
        return build_batch(
            [o.raw() for o in self.observations],
            [p.raw() for p in self.prices],
            partial=self.partial,
        )


observations = st.builds(
    Obs,
    # Repeated entries weight the choice: mostly total TVL of listed protocols, so that
    # series get long enough for the change windows.
    slug=st.sampled_from([*SLUGS, *SLUGS, *SLUGS, "ghost"]),
    metric=st.sampled_from(["tvl", "tvl", "tvl", "volume_24h"]),
    chain=st.sampled_from(["total", "total", "total", "total", *SPELLINGS]),
    value=st.sampled_from(VALUES),
    observed_at=st.sampled_from(TIMES),
    iso=st.booleans(),
    category=st.sampled_from([None, *CATEGORIES]),
    bad=st.sampled_from([None] * 40 + ["nan", "negative", "field"]),
).map(lambda o: o if o.slug != "ghost" else Obs(**{**vars(o), "category": None}))
prices = st.builds(
    Price,
    token=st.sampled_from(TOKENS),
    price=st.sampled_from(VALUES),
    observed_at=st.sampled_from(TIMES),
    bad=st.sampled_from([False] * 20 + [True]),
)
batches = st.builds(
    Batch,
    observations=st.lists(observations, max_size=10).map(tuple),
    prices=st.lists(prices, max_size=3).map(tuple),
    partial=st.sampled_from([True, True, False]),
)


@dataclass
class Outcome:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, int]] = field(default_factory=list)
    committed: bool = True


@dataclass
class IngestModel:
    """What the ingest contract says happens, computed item by item."""

    listings: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: SeriesModel = field(default_factory=SeriesModel)
    prices: SeriesModel = field(default_factory=SeriesModel)
    confidence: dict[tuple[str, float], float | None] = field(default_factory=dict)

    def apply(self, batch: Batch) -> Outcome:
        result = Outcome()
        valid = [(i, o) for i, o in enumerate(batch.observations) if o.bad is None]
        named = {o.slug for _, o in valid if o.category is not None}
        # Malformed items first (observations, then prices), then unknown protocols.
        result.rejected.extend(
            ("observation", i) for i, o in enumerate(batch.observations) if o.bad
        )
        result.rejected.extend(("price", i) for i, p in enumerate(batch.prices) if p.bad)
        unknown = {o.slug for _, o in valid if o.slug not in self.listings and o.slug not in named}
        result.rejected.extend(("observation", i) for i, o in valid if o.slug in unknown)
        if result.rejected and not batch.partial:
            result.committed = False
            return result
        for _, o in valid:
            if o.slug in unknown:
                continue
            if o.slug not in self.listings:
                first = next(n for _, n in valid if n.slug == o.slug and n.category is not None)
                self.listings[o.slug] = {
                    "category": first.category,
                    "chains": [],
                    "observed_at": first.observed_at,
                }
            listing = self.listings[o.slug]
            # Details observed before the last change of details change nothing (like a
            # late value); the same details again do not move that time.
            if (
                o.category is not None
                and o.category != listing["category"]
                and o.observed_at >= listing["observed_at"]
            ):
                listing["category"] = o.category
                listing["observed_at"] = o.observed_at
            chain = SPELLINGS[o.chain]
            if self.metrics.record((o.slug, o.metric, chain, o.observed_at), o.value):
                result.accepted += 1
                if chain != "total" and chain not in listing["chains"]:
                    listing["chains"].append(chain)
            else:
                result.duplicates += 1
        for p in batch.prices:
            if p.bad:
                continue
            if self.prices.record((p.token, p.observed_at), p.price):
                self.confidence[(p.token, p.observed_at)] = p.confidence
                result.accepted += 1
            else:
                result.duplicates += 1
        return result

    def current(self, *series: Any) -> tuple[float, float] | None:
        stamps = [key[-1] for key in self.metrics.history if key[:-1] == series]
        if not stamps:
            return None
        return self.metrics.history[(*series, max(stamps))], max(stamps)

    def points(self, *series: Any) -> list[tuple[float, float]]:
        return sorted(
            (key[-1], value) for key, value in self.metrics.history.items() if key[:-1] == series
        )


def percent_change(
    points: list[tuple[float, float]], now: float, at: float, window: float
) -> float | None:
    """The change against the point nearest ``at - window`` within half a window
    (of equally near points, the later one), None without one or when it is zero."""
    candidates = [
        (abs(t - (at - window)), -t, v) for t, v in points if abs(t - (at - window)) <= window / 2
    ]
    if not candidates:
        return None
    _, _, reference = min(candidates)
    return None if reference == 0 else (now - reference) / reference * 100.0


def check_result(actual: IngestResult, expected: Outcome) -> None:
    assert (actual.accepted, actual.duplicates, actual.committed) == (
        expected.accepted,
        expected.duplicates,
        expected.committed,
    )
    assert [(r.kind, r.index) for r in actual.rejected] == expected.rejected


async def feed_and_check(
    app: DefiRealtime,
    model: IngestModel,
    groups: list[list[Batch]],
    plan: list[tuple[int, bool]],
    history: SqlHistoryReadModel,
) -> None:
    log = EventStoreLog(app)
    hot = InMemoryHotProjection()
    runners = [ProjectionRunner.for_hot(log, hot), ProjectionRunner.for_history(log, history)]
    fed = 0
    for number, group in enumerate(groups):
        results = app.ingest([batch.build() for batch in group])
        for batch, result in zip(group, results, strict=True):
            check_result(result, model.apply(batch))
            event(f"batch: committed={result.committed}, partial={batch.partial}")
            if result.accepted:
                assert result.position == log.head()
            if not result.committed:
                assert result.position == 0
        # Live batches of random sizes; some get lost on the way (the runner fills
        # the gap from the log when the next one arrives).
        page, lost = plan[number % len(plan)] if plan else (3, False)
        while fed < log.head():
            batch = log.read(fed, page)
            fed = batch.last
            if not lost:
                for runner in runners:
                    await runner.advance(batch)
            lost = False
    for runner in runners:
        assert await runner.catch_up() == log.head()
    assert await hot.position() == history.position() == log.head()
    event(f"protocols listed: {len(model.listings)}")

    for slug in [*SLUGS, "ghost"]:
        view = await hot.get_protocol(slug)
        if slug not in model.listings:
            assert view is None
            continue
        assert view is not None
        listing = model.listings[slug]
        assert (view.name, view.category, view.chains) == (
            slug.title(),
            listing["category"],
            tuple(listing["chains"]),
        )
        tvl = model.current(slug, "tvl", "total")
        assert view.tvl == (None if tvl is None else tvl[0])
        volume = model.current(slug, "volume_24h", "total")
        assert view.volume_24h == (None if volume is None else volume[0])
        expected_chains = {}
        for chain in ("Ethereum", "Arbitrum"):
            current = model.current(slug, "tvl", chain)
            if current is not None:
                expected_chains[chain] = current[0]
        assert view.chain_tvls == expected_chains
        series_of_slug = {key[:-1] for key in model.metrics.history if key[0] == slug}
        stamps = [model.current(*series)[1] for series in series_of_slug]  # type: ignore[index]
        assert view.updated_at == (max(stamps) if stamps else None)
        for name, window in CHANGE_WINDOWS.items():
            if getattr(view, name) is not None:
                event(f"{name} computed")
            expected = (
                None
                if tvl is None
                else percent_change(model.points(slug, "tvl", "total"), *tvl, window)
            )
            assert getattr(view, name) == expected, name

        for metric in ("tvl", "volume_24h"):
            for chain in ("total", "ethereum", "arbitrum"):
                series = history.series(SeriesQuery(slug=slug, metric=metric, chain=chain))
                assert list(series.points) == [
                    SeriesPoint(timestamp=t, value=v) for t, v in model.points(slug, metric, chain)
                ]
    assert history.series(SeriesQuery(slug="ghost")).points == []

    views = {view.token: view for view in await hot.prices(TOKENS)}
    for token in TOKENS:
        stamps = [t for (name, t) in model.prices.history if name == token]
        if not stamps:
            assert token not in views
            continue
        at = max(stamps)
        view = views[token]
        assert (view.price, view.observed_at, view.confidence) == (
            model.prices.history[(token, at)],
            at,
            model.confidence[(token, at)],
        )
        points = sorted((t, v) for (name, t), v in model.prices.history.items() if name == token)
        assert view.change_24h == percent_change(points, view.price, at, 86_400.0)


@pytest.fixture(scope="module")
def shared_history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlHistoryReadModel]:
    """One migrated SQLite history database, reset by each example (migrating per example
    would dominate the run time, and shrinking a failure)."""
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path_factory.mktemp('history') / 'h.db'}")
    try:
        yield model
    finally:
        model.close()


@PROPERTY_SETTINGS
@given(
    batch_list=st.lists(batches, min_size=1, max_size=8),
    splits=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=8),
    plan=st.lists(st.tuples(st.integers(min_value=1, max_value=6), st.booleans()), max_size=8),
)
def test_projections_equal_a_recomputation_from_accepted_observations(
    shared_history: SqlHistoryReadModel,
    batch_list: list[Batch],
    splits: list[int],
    plan: list[tuple[int, bool]],
) -> None:
    groups: list[list[Batch]] = []
    rest = list(batch_list)
    for size in splits * len(batch_list):
        if not rest:
            break
        groups.append(rest[:size])
        rest = rest[size:]

    shared_history.reset()
    app = DefiRealtime()
    try:
        asyncio.run(feed_and_check(app, IngestModel(), groups, plan, shared_history))
    finally:
        app.close()


# --- (c) ingest is idempotent -------------------------------------------------------------


def one_value_per_key(batch: Batch) -> Batch:
    """Repeats in the batch repeat the same value and details: a batch that corrects
    itself (two values for one key) is a sequence of corrections, not a repeatable unit."""
    values: dict[tuple[Any, ...], float] = {}
    prices_seen: dict[tuple[Any, ...], float] = {}
    fixed = []
    for o in batch.observations:
        value = values.setdefault((o.slug, o.metric, SPELLINGS[o.chain], o.observed_at), o.value)
        category = None if o.category is None else CATEGORY_OF[o.slug]
        fixed.append(Obs(**{**vars(o), "value": value, "category": category}))
    fixed_prices = [
        Price(**{**vars(p), "price": prices_seen.setdefault((p.token, p.observed_at), p.price)})
        for p in batch.prices
    ]
    return Batch(tuple(fixed), tuple(fixed_prices), batch.partial)


@PROPERTY_SETTINGS
@given(prelude=st.lists(batches, max_size=3), batch=batches)
def test_ingesting_the_same_batch_twice_changes_nothing(prelude: list[Batch], batch: Batch) -> None:
    batch = one_value_per_key(batch)
    app = DefiRealtime()
    try:
        app.ingest([b.build() for b in prelude])
        [first] = app.ingest([batch.build()])
        head = app.recorder.max_notification_id()
        stored = list(app.recorder.select_notifications(start=None, limit=10_000))

        [second] = app.ingest([batch.build()])

        assert second.accepted == 0
        assert second.duplicates == first.accepted + first.duplicates
        if first.committed:
            # Every item that was not refused is a duplicate the second time round.
            assert second.duplicates == len(batch.observations) + len(batch.prices) - len(
                first.rejected
            )
        assert second.rejected == first.rejected
        assert second.committed == first.committed
        # Nothing new: a committed repeat answers the head (to resume from), a refused one 0.
        assert second.position == ((head or 0) if second.committed else 0)
        assert app.recorder.max_notification_id() == head
        assert list(app.recorder.select_notifications(start=None, limit=10_000)) == stored
    finally:
        app.close()
