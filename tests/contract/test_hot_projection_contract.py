"""One ``HotProjection`` contract, run against the in-memory and the Redis adapters.

The property test at the end checks every view against a reference fold written here,
plainly and independently of ``defi_realtime.application.hot_state``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.redis_hot_projection import RedisHotProjection
from defi_realtime.application.log import LogBatch, LogEntry, LogGapError
from defi_realtime.application.ports import HotProjection
from defi_realtime.application.views import (
    CHANGE_WINDOWS,
    RECENT_WINDOW_SECONDS,
    SORT_FIELDS,
    PriceView,
    ProtocolQuery,
    ProtocolView,
    percent_change,
)
from tests.services import redis_url

Factory = Callable[[], Awaitable[HotProjection]]

T0 = 1_700_000_000.0
HOUR = 3_600.0
DAY = 86_400.0


# --- building log entries ---------------------------------------------------------------


def listed(
    position: int,
    slug: str,
    *,
    name: str | None = None,
    category: str = "Dexes",
    chains: Sequence[str] = ("Ethereum",),
    url: str = "",
    kind: str = "protocol_listed",
) -> LogEntry:
    data = {"name": name or slug.title(), "category": category, "chains": list(chains), "url": url}
    return LogEntry(position, kind, slug, data, recorded_at=T0)


def metric(
    position: int,
    slug: str,
    value: float,
    observed_at: float,
    *,
    name: str = "tvl",
    chain: str = "total",
) -> LogEntry:
    data = {
        "metric": name,
        "chain": chain,
        "value": value,
        "observed_at": observed_at,
        "source": "test",
    }
    return LogEntry(position, "metric", slug, data, recorded_at=T0)


def price(
    position: int, token: str, value: float, observed_at: float, confidence: float | None = 0.99
) -> LogEntry:
    data = {"price": value, "observed_at": observed_at, "confidence": confidence}
    return LogEntry(position, "price", token, data, recorded_at=T0)


def alert(position: int, rule: str) -> LogEntry:
    data = {"owner": "o", "measure": 1.0, "observed_at": T0, "idempotency_key": rule}
    return LogEntry(position, "alert_triggered", rule, data, recorded_at=T0)


def batch(after: int, last: int, *entries: LogEntry) -> LogBatch:
    return LogBatch(after=after, last=last, entries=entries)


def sequential(*entries: LogEntry, after: int = 0) -> LogBatch:
    return LogBatch(after=after, last=max(e.position for e in entries), entries=entries)


async def snapshot(projection: HotProjection, slugs: Sequence[str] = ()) -> Any:
    """Everything observable about a projection, for "nothing changed" assertions."""
    return (
        await projection.position(),
        await projection.list_protocols(ProtocolQuery(limit=1_000)),
        await projection.get_protocols(slugs),
        await projection.prices(limit=1_000),
    )


def slugs_of(views: Sequence[ProtocolView]) -> list[str]:
    return [view.slug for view in views]


# --- the contract -----------------------------------------------------------------------

# For the property tests: a fresh projection is made per example, so the factory fixture is
# safe to share; each adapter's subclass runs the same method, and sharing saved examples
# between them is what a contract wants.
SHARED_FIXTURE = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.differing_executors,
    HealthCheck.too_slow,
]


class HotProjectionContract:
    """Subclasses provide ``make``: each call returns a new, empty projection."""

    @pytest.fixture
    def make(self) -> Factory:
        raise NotImplementedError

    @pytest.fixture
    async def projection(self, make: Factory) -> HotProjection:
        return await make()

    async def test_starts_empty(self, projection: HotProjection) -> None:
        assert await projection.position() == 0
        assert await projection.get_protocol("aave") is None
        assert await projection.get_protocols(["aave"]) == []
        page = await projection.list_protocols(ProtocolQuery())
        assert (list(page.items), page.total) == ([], 0)
        assert await projection.prices() == []
        assert await projection.prices(["eth"]) == []

    async def test_keeps_the_listings_oracles(self, projection: HotProjection) -> None:
        with_oracles = listed(1, "aave", name="Aave")
        with_oracles = replace(with_oracles, data={**with_oracles.data, "oracles": ["Pyth"]})
        # An entry without the key (recorded before oracles were kept) keeps them.
        await projection.apply(
            batch(0, 3, with_oracles, metric(2, "aave", 1.0, T0), listed(3, "aave", name="A"))
        )
        found = await projection.get_protocol("aave")
        assert found is not None
        assert (found.name, found.oracles) == ("A", ("Pyth",))
        page = await projection.list_protocols(ProtocolQuery())
        assert [view.oracles for view in page.items] == [("Pyth",)]

    async def test_applies_listing_and_metrics(self, projection: HotProjection) -> None:
        applied = await projection.apply(
            batch(
                0,
                6,
                listed(1, "aave", name="Aave", category="Lending", chains=["Ethereum"], url="u"),
                metric(2, "aave", 100.0, T0),
                metric(3, "aave", 60.0, T0, chain="Ethereum"),
                metric(4, "aave", 7.0, T0 + 10, name="volume_24h"),
                metric(5, "aave", 0.5, T0 - 10, name="fees_24h"),
            )
        )
        assert applied is True
        assert await projection.position() == 6
        assert await projection.get_protocol("aave") == ProtocolView(
            slug="aave",
            name="Aave",
            category="Lending",
            chains=("Ethereum",),
            url="u",
            tvl=100.0,
            chain_tvls={"Ethereum": 60.0},
            change_1h=None,
            change_1d=None,
            change_7d=None,
            volume_24h=7.0,
            fees_24h=0.5,
            updated_at=T0 + 10,
            position=5,
            # Each metric keeps its own data time.
            tvl_at=T0,
            volume_24h_at=T0 + 10,
            fees_24h_at=T0 - 10,
        )

    async def test_a_replayed_batch_changes_nothing(self, projection: HotProjection) -> None:
        first = batch(
            0, 3, listed(1, "aave"), metric(2, "aave", 100.0, T0), price(3, "eth", 2e3, T0)
        )
        assert await projection.apply(first) is True
        before = await snapshot(projection, ["aave"])
        assert await projection.apply(first) is False
        # Same positions, different content: still a replay, judged by position alone.
        forged = batch(1, 3, metric(2, "aave", 999.0, T0 + 5), price(3, "eth", 1.0, T0 + 5))
        assert await projection.apply(forged) is False
        assert await projection.apply(batch(0, 0)) is False
        assert await snapshot(projection, ["aave"]) == before

    async def test_a_partly_applied_batch_applies_only_its_new_entries(
        self, projection: HotProjection
    ) -> None:
        await projection.apply(batch(0, 3, listed(1, "aave"), metric(3, "aave", 100.0, T0)))
        overlapping = batch(
            1,
            6,
            metric(3, "aave", 555.0, T0 + 1),  # already applied: must be skipped
            metric(5, "aave", 20.0, T0 + 2, chain="Ethereum"),
            metric(6, "curve", 30.0, T0 + 3),
        )
        assert await projection.apply(overlapping) is True
        assert await projection.position() == 6
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.tvl, aave.chain_tvls, aave.position) == (100.0, {"Ethereum": 20.0}, 5)
        curve = await projection.get_protocol("curve")
        assert curve is not None
        assert curve.tvl == 30.0

    async def test_a_gap_raises_and_changes_nothing(self, projection: HotProjection) -> None:
        await projection.apply(batch(0, 2, listed(1, "aave"), metric(2, "aave", 100.0, T0)))
        before = await snapshot(projection, ["aave", "curve"])
        with pytest.raises(LogGapError) as raised:
            await projection.apply(batch(3, 5, metric(4, "aave", 1.0, T0 + 1), listed(5, "curve")))
        assert (raised.value.position, raised.value.batch_after) == (2, 3)
        assert await snapshot(projection, ["aave", "curve"]) == before
        assert await projection.apply(batch(2, 5, listed(5, "curve"))) is True
        assert slugs_of(await projection.get_protocols(["curve", "aave"])) == ["curve", "aave"]

    async def test_positions_without_entries_still_advance(self, projection: HotProjection) -> None:
        assert await projection.apply(batch(0, 10)) is True
        assert await projection.position() == 10
        assert await projection.apply(batch(10, 12, alert(11, "rule-1"))) is True
        assert await projection.position() == 12
        assert (await projection.list_protocols(ProtocolQuery())).total == 0

    async def test_a_late_observation_does_not_move_the_current_value(
        self, projection: HotProjection
    ) -> None:
        await projection.apply(
            sequential(
                metric(1, "aave", 100.0, T0),
                metric(2, "aave", 5.0, T0, name="volume_24h"),
                metric(3, "aave", 50.0, T0 - 60),  # late
                metric(4, "aave", 9.0, T0 - 60, name="volume_24h"),  # late
                metric(5, "aave", 70.0, T0 - 60, chain="Ethereum"),
                metric(6, "aave", 10.0, T0 - 120, chain="Ethereum"),  # late
            )
        )
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.tvl, aave.volume_24h, aave.chain_tvls) == (100.0, 5.0, {"Ethereum": 70.0})
        assert aave.updated_at == T0
        # Late and recorded nowhere (not total TVL): the entry changed nothing.
        assert aave.position == 5
        # An observation as recent as the current one replaces it (recorded later).
        await projection.apply(sequential(metric(7, "aave", 120.0, T0), after=6))
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.tvl, aave.position) == (120.0, 7)

    async def test_metrics_create_protocols_and_extend_chains(
        self, projection: HotProjection
    ) -> None:
        await projection.apply(
            sequential(
                metric(1, "new-dex", 10.0, T0, chain="Base"),
                metric(2, "new-dex", 1.0, T0, name="volume_24h", chain="Arbitrum"),
                metric(3, "new-dex", 11.0, T0, chain="Base"),
                metric(4, "new-dex", 12.0, T0 - 1, chain="total"),
            )
        )
        assert await projection.get_protocol("new-dex") == ProtocolView(
            slug="new-dex",
            name="new-dex",
            category="",
            chains=("Base", "Arbitrum"),
            url="",
            tvl=12.0,
            chain_tvls={"Base": 11.0},
            change_1h=None,
            change_1d=None,
            change_7d=None,
            volume_24h=None,
            fees_24h=None,
            updated_at=T0,
            position=4,
            tvl_at=T0 - 1,
        )
        # A listing sets name, category, chains and url, keeping the chains the protocol has
        # a value on; later metrics add their chains.
        await projection.apply(
            sequential(
                listed(5, "new-dex", name="New", category="Dexes", chains=["Ethereum"], url="x"),
                metric(6, "new-dex", 3.0, T0 + 1, chain="Optimism"),
                after=4,
            )
        )
        view = await projection.get_protocol("new-dex")
        assert view is not None
        assert (view.name, view.category, view.url) == ("New", "Dexes", "x")
        assert view.chains == ("Ethereum", "Base", "Arbitrum", "Optimism")
        assert view.chain_tvls == {"Base": 11.0, "Optimism": 3.0}
        assert view.position == 6

    async def test_changes_compare_with_the_value_a_window_ago(
        self, projection: HotProjection
    ) -> None:
        now = T0 + 10 * DAY

        async def changes() -> dict[str, float | None]:
            view = await projection.get_protocol("aave")
            assert view is not None
            return {name: getattr(view, name) for name in CHANGE_WINDOWS}

        def expected(kept: list[tuple[float, float]]) -> dict[str, float | None]:
            at, value = kept[-1]
            return {n: percent_change(kept, value, at, w) for n, w in CHANGE_WINDOWS.items()}

        history = [
            (now - 25 * HOUR, 100.0),
            (now - DAY, 150.0),
            (now - 23 * HOUR, 170.0),
            (now - HOUR, 180.0),
            (now, 200.0),
        ]
        too_old = (now - 9 * DAY, 40.0)  # behind the kept history once ``now`` is seen
        entries = [metric(i + 1, "aave", v, at) for i, (at, v) in enumerate([too_old, *history])]
        await projection.apply(sequential(*entries))
        assert await changes() == expected(history)
        # The references sit exactly a window back, so any reading of "a window ago" agrees.
        assert await changes() == {
            "change_1h": pytest.approx((200 - 180) / 180 * 100),
            "change_1d": pytest.approx((200 - 150) / 150 * 100),
            "change_7d": None,
        }

        # A late observation at a known timestamp replaces it (recorded later), and moves
        # the change but not the current value.
        await projection.apply(sequential(metric(7, "aave", 50.0, now - DAY), after=6))
        history[1] = (now - DAY, 50.0)
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.tvl, aave.position) == (200.0, 7)  # it changed the history: the view
        assert await changes() == expected(history)
        assert aave.change_1d == pytest.approx(300.0)

        # A week back, within the kept history: the 7d change appears.
        await projection.apply(sequential(metric(8, "aave", 400.0, now - 7 * DAY), after=7))
        history.insert(0, (now - 7 * DAY, 400.0))
        assert await changes() == expected(history)
        assert (await changes())["change_7d"] == pytest.approx(-50.0)

        # Too old to keep: changes nothing at all.
        await projection.apply(sequential(metric(9, "aave", 1.0, now - 8.5 * DAY), after=8))
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.change_7d, aave.position) == (pytest.approx(-50.0), 8)

        # Moving on trims the history (the week-old point falls out) and the references.
        later = now + DAY + HOUR
        await projection.apply(sequential(metric(10, "aave", 300.0, later), after=9))
        history = [(at, v) for at, v in history if at >= later - RECENT_WINDOW_SECONDS]
        history.append((later, 300.0))
        assert await changes() == expected(history)
        assert await changes() == {
            "change_1h": None,
            "change_1d": pytest.approx(50.0),  # against 200, observed a day and an hour ago
            "change_7d": None,
        }

    async def test_volume_and_fees_have_their_own_day_and_week_changes(
        self, projection: HotProjection
    ) -> None:
        def flows(view: ProtocolView | None) -> tuple[float | None, ...]:
            assert view is not None
            return (
                view.volume_24h_change_1d,
                view.volume_24h_change_7d,
                view.fees_24h_change_1d,
                view.fees_24h_change_7d,
            )

        now = T0
        await projection.apply(
            sequential(
                metric(1, "dex", 80.0, now - 7 * DAY, name="volume_24h"),
                metric(2, "dex", 50.0, now - DAY, name="volume_24h"),
                metric(3, "dex", 100.0, now, name="volume_24h"),
                metric(4, "dex", 4.0, now - DAY, name="fees_24h"),
                metric(5, "dex", 5.0, now, name="fees_24h"),
                metric(6, "dex", 1_000.0, now),  # a TVL, whose changes stay its own
            )
        )
        dex = await projection.get_protocol("dex")
        assert flows(dex) == (
            pytest.approx(100.0),
            pytest.approx(25.0),
            pytest.approx(25.0),
            None,
        )
        assert dex is not None
        assert dex.change_1d is None

        # A TVL-only batch leaves the flows' changes standing; a late volume figure a day
        # back moves its change (not the current volume) and the protocol's position.
        await projection.apply(sequential(metric(7, "dex", 1_100.0, now + 60), after=6))
        assert flows(await projection.get_protocol("dex"))[:3] == (
            pytest.approx(100.0),
            pytest.approx(25.0),
            pytest.approx(25.0),
        )
        await projection.apply(
            sequential(metric(8, "dex", 200.0, now - DAY, name="volume_24h"), after=7)
        )
        dex = await projection.get_protocol("dex")
        assert dex is not None
        assert (dex.volume_24h, dex.volume_24h_change_1d, dex.position) == (
            100.0,
            pytest.approx(-50.0),
            8,
        )

        # Sortable like the other figures.
        await projection.apply(
            sequential(
                metric(9, "amm", 10.0, now - DAY, name="volume_24h"),
                metric(10, "amm", 30.0, now, name="volume_24h"),
                after=8,
            )
        )
        page = await projection.list_protocols(ProtocolQuery(sort="volume_24h_change_1d"))
        assert slugs_of(page.items) == ["amm", "dex"]

    async def test_the_kept_history_reaches_exactly_a_window_behind_the_newest(
        self, projection: HotProjection
    ) -> None:
        edge = T0 - RECENT_WINDOW_SECONDS
        await projection.apply(sequential(metric(1, "kept", 2.0, T0), metric(2, "kept", 1.0, edge)))
        await projection.apply(
            sequential(metric(3, "gone", 2.0, T0), metric(4, "gone", 1.0, edge - 1), after=2)
        )
        kept = await projection.get_protocol("kept")
        gone = await projection.get_protocol("gone")
        assert kept is not None
        assert gone is not None
        assert (kept.change_7d, kept.position) == (
            percent_change([(edge, 1.0), (T0, 2.0)], 2.0, T0, CHANGE_WINDOWS["change_7d"]),
            2,
        )
        assert kept.change_7d is not None
        assert (gone.change_7d, gone.position) == (None, 3)

    async def test_a_zero_reference_gives_no_change(self, projection: HotProjection) -> None:
        await projection.apply(sequential(metric(1, "a", 0.0, T0), metric(2, "a", 5.0, T0 + DAY)))
        view = await projection.get_protocol("a")
        assert view is not None
        assert (view.change_1h, view.change_1d) == (None, None)

    async def _seed_rankings(self, projection: HotProjection) -> None:
        await projection.apply(
            sequential(
                listed(1, "aave", name="Aave", category="Lending", chains=["Ethereum", "Base"]),
                listed(2, "curve", name="curve", category="Dexes", chains=["Ethereum"]),
                listed(3, "uni", name="Uniswap", category="dexes", chains=["Arbitrum"]),
                listed(4, "gmx", name="GMX", category="Derivatives", chains=["Arbitrum"]),
                listed(5, "tied", name="Tied", category="Dexes", chains=["Base"]),
                metric(6, "aave", 300.0, T0),
                metric(7, "curve", 200.0, T0),
                metric(8, "uni", 500.0, T0),
                metric(9, "tied", 200.0, T0),
                metric(10, "aave", 5.0, T0, name="volume_24h"),
                metric(11, "uni", 9.0, T0, name="volume_24h"),
                # Listed only on Arbitrum, but has TVL on Ethereum: found under both.
                metric(12, "uni", 50.0, T0, chain="Ethereum"),
                listed(13, "uni", name="Uniswap", category="dexes", chains=["Arbitrum"]),
                # gmx: no TVL at all.
            )
        )

    async def test_sorting_by_tvl_puts_none_last_and_breaks_ties_by_slug(
        self, projection: HotProjection
    ) -> None:
        await self._seed_rankings(projection)
        page = await projection.list_protocols(ProtocolQuery(sort="tvl"))
        assert slugs_of(page.items) == ["uni", "aave", "curve", "tied", "gmx"]
        assert (page.total, page.limit, page.offset) == (5, 100, 0)
        page = await projection.list_protocols(ProtocolQuery(sort="tvl", descending=False))
        assert slugs_of(page.items) == ["curve", "tied", "aave", "uni", "gmx"]

    async def test_the_chain_filter_takes_any_spelling_or_alias_of_a_chain(
        self, projection: HotProjection
    ) -> None:
        await self._seed_rankings(projection)
        await projection.apply(
            sequential(
                listed(14, "pancake", name="Pancake", chains=["BSC"]),
                metric(15, "pancake", 40.0, T0),
                after=13,
            )
        )
        for spelling in ("arbitrum", " ARBITRUM ", "Arbitrum One"):
            page = await projection.list_protocols(ProtocolQuery(chain=spelling))
            # Neither has a TVL it can be ranked by on Arbitrum: by slug.
            assert slugs_of(page.items) == ["gmx", "uni"], spelling
        for spelling in ("bsc", "Binance", "bnb chain"):
            page = await projection.list_protocols(ProtocolQuery(chain=spelling))
            assert slugs_of(page.items) == ["pancake"], spelling
        both = await projection.list_protocols(ProtocolQuery(chain="ethereum", category="DEXES"))
        assert slugs_of(both.items) == ["curve", "uni"]

    async def test_pagination(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)
        page = await projection.list_protocols(ProtocolQuery(limit=2, offset=2))
        assert (slugs_of(page.items), page.total, page.limit, page.offset) == (
            ["curve", "tied"],
            5,
            2,
            2,
        )
        page = await projection.list_protocols(ProtocolQuery(limit=2, offset=4))
        assert (slugs_of(page.items), page.total) == (["gmx"], 5)
        page = await projection.list_protocols(ProtocolQuery(limit=2, offset=9))
        assert (slugs_of(page.items), page.total) == ([], 5)
        page = await projection.list_protocols(ProtocolQuery(limit=0))
        assert (slugs_of(page.items), page.total) == ([], 5)
        page = await projection.list_protocols(ProtocolQuery(sort="name", limit=1, offset=1))
        assert (slugs_of(page.items), page.total) == (["tied"], 5)

    async def test_sorting_by_other_fields(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)
        by_name = await projection.list_protocols(ProtocolQuery(sort="name", descending=False))
        assert slugs_of(by_name.items) == ["aave", "curve", "gmx", "tied", "uni"]
        by_volume = await projection.list_protocols(ProtocolQuery(sort="volume_24h"))
        assert slugs_of(by_volume.items) == ["uni", "aave", "curve", "gmx", "tied"]
        by_volume = await projection.list_protocols(
            ProtocolQuery(sort="volume_24h", descending=False)
        )
        assert slugs_of(by_volume.items) == ["aave", "uni", "curve", "gmx", "tied"]
        by_change = await projection.list_protocols(ProtocolQuery(sort="change_1d"))
        assert slugs_of(by_change.items) == ["aave", "curve", "gmx", "tied", "uni"]

    async def test_filters(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)

        async def listed_slugs(**query: Any) -> tuple[list[str], int]:
            page = await projection.list_protocols(ProtocolQuery(**query))
            return slugs_of(page.items), page.total

        # Ranked by the TVL on the chain: curve's whole TVL (its one chain), uni's own
        # Ethereum figure; aave lists two chains and reports a total only: no value there.
        assert await listed_slugs(chain="Ethereum") == (["curve", "uni", "aave"], 3)
        assert await listed_slugs(chain="Arbitrum") == (["gmx", "uni"], 2)
        assert await listed_slugs(chain="Solana") == ([], 0)
        assert await listed_slugs(category="DEXES") == (["uni", "curve", "tied"], 3)
        assert await listed_slugs(category="dex") == ([], 0)
        assert await listed_slugs(min_tvl=200.0) == (["uni", "aave", "curve", "tied"], 4)
        assert await listed_slugs(min_tvl=0.0, descending=False) == (
            ["curve", "tied", "aave", "uni"],
            4,
        )
        assert await listed_slugs(chain="Ethereum", category="dexes") == (["curve", "uni"], 2)
        # With a chain, min_tvl reads the TVL on the chain too.
        assert await listed_slugs(chain="Ethereum", category="dexes", min_tvl=51.0) == (
            ["curve"],
            1,
        )
        assert await listed_slugs(chain="Base", min_tvl=150.0, sort="name") == (["tied"], 1)
        assert await listed_slugs(chain="Arbitrum", category="Derivatives", sort="name") == (
            ["gmx"],
            1,
        )
        assert await listed_slugs(chain="Base", category="dexes", limit=1, offset=0) == (
            ["tied"],
            1,
        )

    async def test_chain_and_category_filters_a_protocol_with_only_a_chain_tvl(
        self, projection: HotProjection
    ) -> None:
        # No total TVL (ranked last in its category) but 50 on Arbitrum: the chain's TVL is
        # what min_tvl reads (the Redis intersection once scored it 0 * inf -> 0).
        await projection.apply(batch(0, 1, metric(1, "curve", 50.0, T0, chain="Arbitrum")))
        page = await projection.list_protocols(
            ProtocolQuery(chain="Arbitrum", category="", min_tvl=50.0)
        )
        assert (slugs_of(page.items), page.total) == (["curve"], 1)

    async def test_moving_a_protocol_updates_every_ranking(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)
        await projection.apply(
            sequential(
                listed(14, "curve", name="Curve", category="Lending", chains=["Base"]),
                metric(15, "curve", 1_000.0, T0 + 1),
                after=13,
            )
        )
        for query, expected in [
            (ProtocolQuery(), ["curve", "uni", "aave", "tied", "gmx"]),
            (ProtocolQuery(chain="Ethereum"), ["uni", "aave"]),
            (ProtocolQuery(chain="Base", descending=False), ["tied", "curve", "aave"]),
            (ProtocolQuery(category="dexes"), ["uni", "tied"]),
            (ProtocolQuery(category="LENDING", min_tvl=400.0), ["curve"]),
        ]:
            page = await projection.list_protocols(query)
            assert (slugs_of(page.items), page.total) == (expected, len(expected)), query

    async def test_unknown_sort_field_is_refused(self, projection: HotProjection) -> None:
        with pytest.raises(ValueError, match="sort"):
            await projection.list_protocols(ProtocolQuery(sort="slug"))

    async def test_get_protocols_keeps_the_given_order(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)
        views = await projection.get_protocols(["tied", "nope", "aave", "uni"])
        assert slugs_of(views) == ["tied", "aave", "uni"]
        assert await projection.get_protocols([]) == []

    async def test_prices(self, projection: HotProjection) -> None:
        await projection.apply(
            sequential(
                price(1, "eth", 2_000.0, T0 - DAY - 60, confidence=0.9),
                price(2, "eth", 2_200.0, T0, confidence=None),
                price(3, "eth", 1_000.0, T0 - 30),  # late
                price(4, "btc", 60_000.0, T0 + 5),
                price(5, "sol", 100.0, T0 - 5),
            )
        )
        eth = PriceView(
            token="eth",
            price=2_200.0,
            observed_at=T0,
            confidence=None,
            change_24h=pytest.approx(10.0),  # type: ignore[arg-type]
            position=3,  # the late price is still history for change_24h
        )
        assert await projection.prices(["eth", "doge"]) == [eth]
        latest = await projection.prices(limit=2)
        assert [view.token for view in latest] == ["btc", "eth"]
        assert [view.token for view in await projection.prices()] == ["btc", "eth", "sol"]
        assert [view.token for view in await projection.prices(["sol", "btc"])] == ["sol", "btc"]
        btc = (await projection.prices(["btc"]))[0]
        assert (btc.price, btc.confidence, btc.change_24h, btc.position) == (
            60_000.0,
            0.99,
            None,
            4,
        )

    async def test_reset_forgets_everything(self, projection: HotProjection) -> None:
        await self._seed_rankings(projection)
        await projection.apply(sequential(price(14, "eth", 1.0, T0), after=13))
        await projection.reset()
        assert await snapshot(projection, ["aave"]) == (
            0,
            await InMemoryHotProjection().list_protocols(ProtocolQuery(limit=1_000)),
            [],
            [],
        )
        assert await projection.list_protocols(ProtocolQuery(chain="Ethereum")) == (
            await InMemoryHotProjection().list_protocols(ProtocolQuery(chain="Ethereum"))
        )
        # A rebuild starts from zero again.
        assert await projection.apply(sequential(metric(1, "aave", 1.0, T0))) is True
        assert slugs_of((await projection.list_protocols(ProtocolQuery())).items) == ["aave"]

    async def test_concurrent_deliveries_of_one_batch_apply_once(
        self, projection: HotProjection
    ) -> None:
        one = sequential(listed(1, "aave"), metric(2, "aave", 10.0, T0), metric(3, "aave", 1.0, T0))
        results = await asyncio.gather(*(projection.apply(one) for _ in range(5)))
        assert sorted(results) == [False, False, False, False, True]
        aave = await projection.get_protocol("aave")
        assert aave is not None
        assert (aave.tvl, aave.position) == (1.0, 3)

    # --- property: the views equal an independent reference fold -------------------------

    @settings(max_examples=40, deadline=None, suppress_health_check=SHARED_FIXTURE)
    @given(data=st.data())
    async def test_views_equal_a_reference_fold(self, make: Factory, data: st.DataObject) -> None:
        entries = data.draw(log_entries(), label="entries")
        last = (entries[-1].position if entries else 0) + data.draw(st.integers(0, 2))
        cuts = data.draw(st.sets(st.integers(1, max(last - 1, 1)), max_size=8), label="cuts")
        bounds = [0, *sorted(c for c in cuts if 0 < c < last), last] if last else [0]
        batches = [
            LogBatch(a, b, tuple(e for e in entries if a < e.position <= b))
            for a, b in itertools.pairwise(bounds)
        ]
        projection = await make()
        for index, current in enumerate(batches):
            delivery = data.draw(st.sampled_from(["plain", "merged", "replay", "gap"]))
            if delivery == "gap" and index + 1 < len(batches):
                with pytest.raises(LogGapError):
                    await projection.apply(batches[index + 1])
            if delivery == "merged" and index > 0:
                previous = batches[index - 1]
                merged = LogBatch(previous.after, current.last, previous.entries + current.entries)
                assert await projection.apply(merged) is True
            else:
                assert await projection.apply(current) is True
            if delivery == "replay":
                assert await projection.apply(current) is False
            assert await projection.position() == current.last

        expected = ReferenceFold(entries)
        assert await projection.position() == last
        for slug in PROPERTY_SLUGS:
            assert await projection.get_protocol(slug) == expected.protocols.get(slug), slug
        assert await projection.get_protocols([*PROPERTY_SLUGS, "zzz"]) == [
            expected.protocols[slug] for slug in PROPERTY_SLUGS if slug in expected.protocols
        ]
        for query in data.draw(st.lists(protocol_queries(), min_size=1, max_size=4)):
            page = await projection.list_protocols(query)
            items, total = expected.list(query)
            assert (list(page.items), page.total) == (items, total), query
        assert await projection.prices([*PROPERTY_TOKENS, "zzz"]) == [
            expected.prices[token] for token in PROPERTY_TOKENS if token in expected.prices
        ]
        limit = data.draw(st.integers(0, 4))
        assert await projection.prices(limit=limit) == expected.latest_prices(limit)

    @settings(max_examples=12, deadline=None, suppress_health_check=SHARED_FIXTURE)
    @given(data=st.data())
    async def test_thinned_series_answer_as_the_whole_window(
        self, make: Factory, data: st.DataObject
    ) -> None:
        """ADR 0044: after every batch of a stream with late and out-of-order points, the
        views equal the reference fold's, which keeps the whole 8-day window."""
        entries = data.draw(thinning_streams(), label="entries")
        cuts = data.draw(st.sets(st.integers(1, 59), max_size=12), label="cuts")
        projection = await make()
        bounds = [0, *sorted(c for c in cuts if c < len(entries)), len(entries)]
        for after, last in itertools.pairwise(bounds):
            assert await projection.apply(LogBatch(after, last, tuple(entries[after:last])))
            expected = ReferenceFold(entries[:last])
            slugs = sorted(expected.protocols)
            assert await projection.get_protocols(slugs) == [expected.protocols[s] for s in slugs]
            assert await projection.prices(["eth"]) == list(expected.prices.values())


# --- the adapters -----------------------------------------------------------------------


class TestInMemoryHotProjection(HotProjectionContract):
    @pytest.fixture
    def make(self) -> Factory:
        async def make() -> HotProjection:
            return InMemoryHotProjection()

        return make


class TestRedisHotProjection(HotProjectionContract):
    @pytest.fixture
    async def client(self) -> AsyncIterator[Redis]:
        client = Redis.from_url(redis_url())
        try:
            yield client
        finally:
            await client.aclose()

    @pytest.fixture
    async def make(self, client: Redis) -> AsyncIterator[Factory]:
        created: list[RedisHotProjection] = []

        async def make() -> HotProjection:
            projection = RedisHotProjection(client, prefix=f"test:hot:{uuid.uuid4().hex}:")
            created.append(projection)
            return projection

        yield make
        for projection in created:
            await projection.reset()

    async def test_keys_live_under_the_prefix_and_reset_removes_only_them(
        self, client: Redis
    ) -> None:
        base = f"test:hot:{uuid.uuid4().hex}"
        # Glob characters in the prefix must not let reset reach other keys.
        prefix = f"{base}:[*]:"
        neighbours = [f"{base}:x:position", f"{base}:[*]", f"{base}:*:position"]
        for key in neighbours:
            await client.set(key, "keep")
        projection = RedisHotProjection(client, prefix=prefix)
        try:
            await self._seed_rankings(projection)
            await projection.apply(sequential(price(14, "eth", 1.0, T0), after=13))
            keys = {key.decode() async for key in client.scan_iter(match=f"{base}*")}
            ours = keys - set(neighbours)
            assert ours
            assert all(key.startswith(prefix) for key in ours)
            await projection.reset()
            assert {key.decode() async for key in client.scan_iter(match=f"{base}*")} == set(
                neighbours
            )
        finally:
            await client.delete(*neighbours)
            await projection.reset()

    async def test_writers_sharing_a_prefix_apply_a_batch_once(self, client: Redis) -> None:
        prefix = f"test:hot:{uuid.uuid4().hex}:"
        writers = [RedisHotProjection(client, prefix=prefix) for _ in range(4)]
        try:
            batches = [
                sequential(metric(1, "aave", 10.0, T0), metric(2, "aave", 20.0, T0 + HOUR)),
                sequential(metric(3, "aave", 30.0, T0 + 2 * HOUR), after=2),
            ]
            for one in batches:
                results = await asyncio.gather(*(writer.apply(one) for writer in writers))
                assert sorted(results) == [False, False, False, True]
            aave = await writers[0].get_protocol("aave")
            assert aave is not None
            assert (aave.tvl, aave.change_1h, aave.position) == (30.0, 50.0, 3)
            assert await client.zcard(f"{prefix}tvl:aave") == 3
        finally:
            await writers[0].reset()

    async def test_history_is_trimmed_in_redis(self, client: Redis) -> None:
        prefix = f"test:hot:{uuid.uuid4().hex}:"
        projection = RedisHotProjection(client, prefix=prefix)
        try:
            days = [metric(day + 1, "aave", 1.0 + day, T0 + day * DAY) for day in range(12)]
            for entry in days:
                await projection.apply(sequential(entry, after=entry.position - 1))
            await projection.apply(sequential(price(13, "eth", 1.0, T0), after=12))
            await projection.apply(sequential(price(14, "eth", 2.0, T0 + 9 * DAY), after=13))
            # Points 0..2 days are more than 8 days behind day 11; day 3 is exactly 8 behind,
            # but day 4, 7 days behind, is nearer to any later week's start (ADR 0044).
            assert await client.zcard(f"{prefix}tvl:aave") == 8
            assert await client.zcard(f"{prefix}price:eth") == 1
        finally:
            await projection.reset()

    async def test_a_decoding_client_works_too(self) -> None:
        client = Redis.from_url(redis_url(), decode_responses=True)
        projection = RedisHotProjection(client, prefix=f"test:hot:{uuid.uuid4().hex}:")
        try:
            await self._seed_rankings(projection)
            await projection.apply(sequential(price(14, "eth", 1.0, T0), after=13))
            page = await projection.list_protocols(ProtocolQuery(chain="Ethereum"))
            assert slugs_of(page.items) == ["curve", "uni", "aave"]
            assert [view.token for view in await projection.prices()] == ["eth"]
        finally:
            await projection.reset()
            await client.aclose()


# --- the property test's inputs and reference fold --------------------------------------

# ``thinning_streams`` (ADR 0044): forward steps and lateness on a half-hour grid, so points
# land exactly on window edges, halfway between two points (ties) and on the reach's
# horizon, as well as between them.
THIN_STEPS = (0.0, HOUR / 2, HOUR, 6 * HOUR, 12 * HOUR, DAY, 3.5 * DAY)
THIN_LATENESS = (HOUR / 2, HOUR, 1.5 * HOUR, 12 * HOUR, DAY, 1.5 * DAY, 3.5 * DAY, 7 * DAY)
THIN_LATENESS += (7.5 * DAY, 8 * DAY, 8.5 * DAY)
THIN_VALUES = (0.0, 1.0, 2.0, 50.0, 1e9)
THIN_SERIES = (("metric", "a", "tvl"), ("metric", "a", "volume_24h"), ("metric", "b", "tvl"))
THIN_SERIES += (("metric", "a", "fees_24h"), ("price", "eth", ""))


@st.composite
def thinning_streams(draw: st.DrawFn) -> list[LogEntry]:
    newest: dict[tuple[str, str, str], float] = {}
    entries: list[LogEntry] = []
    for position in range(1, draw(st.integers(1, 60)) + 1):
        series = draw(st.sampled_from(THIN_SERIES))
        kind, key, metric = series
        latest = newest.get(series, T0)
        if draw(st.integers(0, 3)) == 0:  # late: behind the series' newest
            at = latest - draw(st.sampled_from(THIN_LATENESS))
        else:
            at = latest + draw(st.sampled_from(THIN_STEPS))
        newest[series] = max(latest, at)
        value = draw(st.sampled_from(THIN_VALUES))
        if kind == "price":
            data: dict[str, object] = {"price": value, "observed_at": at, "confidence": None}
        else:
            data = {"metric": metric, "chain": "total", "value": value, "observed_at": at}
        entries.append(LogEntry(position, kind, key, data, recorded_at=T0))
    return entries


PROPERTY_SLUGS = ("aave", "curve", "uni")
PROPERTY_TOKENS = ("btc", "eth")
PROPERTY_CHAINS = ("Ethereum", "Arbitrum")
# Offsets crossing every change window and the edge of the kept history.
OFFSETS = (
    *(0.0, 60.0, HOUR / 2, HOUR, 1.5 * HOUR, 2 * HOUR, DAY / 2, DAY - 60, DAY, DAY + 60),
    *(1.5 * DAY, 3.5 * DAY, 6 * DAY, 7 * DAY, 8 * DAY, 9 * DAY, 10.5 * DAY),
)
VALUES = (0.0, 1.0, 50.0, 100.0, 250.5, 1e9)


@st.composite
def log_entries(draw: st.DrawFn) -> list[LogEntry]:
    slug = st.sampled_from(PROPERTY_SLUGS)
    observed_at = st.sampled_from(OFFSETS).map(lambda offset: T0 + offset)
    facts = st.one_of(
        st.tuples(
            st.sampled_from(["protocol_listed", "protocol_updated"]),
            slug,
            st.fixed_dictionaries(
                {
                    "name": st.sampled_from(["Alpha", "beta", "Gamma", "alpha"]),
                    "category": st.sampled_from(["Dexes", "dexes", "Lending", ""]),
                    "chains": st.lists(st.sampled_from(PROPERTY_CHAINS), max_size=2),
                    "url": st.sampled_from(["", "https://x"]),
                }
            ),
        ),
        st.tuples(
            st.just("metric"),
            slug,
            st.fixed_dictionaries(
                {
                    "metric": st.sampled_from(["tvl", "tvl", "tvl", "volume_24h", "fees_24h"]),
                    "chain": st.sampled_from(["total", "total", *PROPERTY_CHAINS]),
                    "value": st.sampled_from(VALUES),
                    "observed_at": observed_at,
                    "source": st.just("test"),
                }
            ),
        ),
        st.tuples(
            st.just("price"),
            st.sampled_from(PROPERTY_TOKENS),
            st.fixed_dictionaries(
                {
                    "price": st.sampled_from(VALUES),
                    "observed_at": observed_at,
                    "confidence": st.sampled_from([None, 0.5]),
                }
            ),
        ),
        st.tuples(st.just("alert_triggered"), st.just("rule"), st.just({"owner": "o"})),
    )
    entries = []
    position = 0
    for kind, key, fact in draw(st.lists(facts, max_size=30)):
        # Positions the log leaves out (facts about other aggregates) make holes.
        position += draw(st.sampled_from([1, 1, 1, 2]))
        entries.append(LogEntry(position, kind, key, fact, recorded_at=T0))
    return entries


def protocol_queries() -> st.SearchStrategy[ProtocolQuery]:
    return st.builds(
        ProtocolQuery,
        chain=st.sampled_from([None, *PROPERTY_CHAINS, "Base"]),
        category=st.sampled_from([None, "DEXES", "lending", ""]),
        min_tvl=st.sampled_from([None, 0.0, 50.0, 1e10]),
        sort=st.sampled_from(sorted(SORT_FIELDS)),
        descending=st.booleans(),
        limit=st.integers(0, 4),
        offset=st.integers(0, 3),
    )


@dataclass
class _Protocol:
    slug: str
    name: str
    category: str = ""
    chains: list[str] = field(default_factory=list)
    url: str = ""
    current: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    # (observed_at, value) of the total series that keep a history: tvl, volume and fees
    logs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    position: int = 0


@dataclass
class _Token:
    price: float
    observed_at: float
    confidence: float | None
    log: list[tuple[float, float]]
    position: int


def _kept(log: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Recent history: the last-recorded value per timestamp, within the window."""
    newest = max(at for at, _ in log)
    by_time = dict(log)  # later-recorded observations overwrite earlier ones
    return sorted((at, v) for at, v in by_time.items() if at >= newest - RECENT_WINDOW_SECONDS)


class ReferenceFold:
    """What the projection should show after ``entries``, computed the plain way."""

    def __init__(self, entries: Sequence[LogEntry]) -> None:
        raw: dict[str, _Protocol] = {}
        tokens: dict[str, _Token] = {}
        for entry in entries:
            data = entry.data
            if entry.kind in ("protocol_listed", "protocol_updated"):
                protocol = raw.setdefault(entry.key, _Protocol(entry.key, entry.key))
                protocol.name = data["name"]
                protocol.category = data["category"]
                valued = [chain for _, chain in protocol.current if chain != "total"]
                protocol.chains = list(dict.fromkeys([*data["chains"], *valued]))
                protocol.url = data["url"]
                protocol.position = entry.position
            elif entry.kind == "metric":
                changed = entry.key not in raw
                protocol = raw.setdefault(entry.key, _Protocol(entry.key, entry.key))
                key = (data["metric"], data["chain"])
                at, value = data["observed_at"], data["value"]
                if key[1] != "total" and key[1] not in protocol.chains:
                    protocol.chains.append(key[1])
                    changed = True
                if key not in protocol.current or at >= protocol.current[key][1]:
                    protocol.current[key] = (value, at)
                    changed = True
                if key[1] == "total" and key[0] in ("tvl", "volume_24h", "fees_24h"):
                    log = protocol.logs.setdefault(key[0], [])
                    log.append((at, value))
                    newest = max(a for a, _ in log)
                    if at >= newest - RECENT_WINDOW_SECONDS:
                        changed = True
                if changed:
                    protocol.position = entry.position
            elif entry.kind == "price":
                at, value = data["observed_at"], data["price"]
                token = tokens.get(entry.key)
                if token is None:
                    tokens[entry.key] = _Token(
                        value, at, data["confidence"], [(at, value)], entry.position
                    )
                    continue
                token.log.append((at, value))
                newest = max(a for a, _ in token.log)
                if at >= token.observed_at:
                    token.price, token.observed_at = value, at
                    token.confidence = data["confidence"]
                    token.position = entry.position
                elif at >= newest - RECENT_WINDOW_SECONDS:
                    token.position = entry.position
        self.protocols = {slug: self._view(p) for slug, p in raw.items()}
        self.prices = {
            name: PriceView(
                token=name,
                price=t.price,
                observed_at=t.observed_at,
                confidence=t.confidence,
                change_24h=percent_change(_kept(t.log), t.price, t.observed_at, DAY),
                position=t.position,
            )
            for name, t in tokens.items()
        }

    @staticmethod
    def _view(p: _Protocol) -> ProtocolView:
        tvl = p.current.get(("tvl", "total"))
        volume = p.current.get(("volume_24h", "total"))
        fees = p.current.get(("fees_24h", "total"))

        def change(window: float, metric: str = "tvl") -> float | None:
            current = p.current.get((metric, "total"))
            if current is None:
                return None
            return percent_change(_kept(p.logs[metric]), current[0], current[1], window)

        return ProtocolView(
            slug=p.slug,
            name=p.name,
            category=p.category,
            chains=tuple(p.chains),
            url=p.url,
            tvl=None if tvl is None else tvl[0],
            chain_tvls={
                c: v for (m, c), (v, _) in p.current.items() if m == "tvl" and c != "total"
            },
            change_1h=change(HOUR),
            change_1d=change(DAY),
            change_7d=change(7 * DAY),
            volume_24h=None if volume is None else volume[0],
            fees_24h=None if fees is None else fees[0],
            updated_at=max((at for _, at in p.current.values()), default=None),
            position=p.position,
            tvl_at=None if tvl is None else tvl[1],
            volume_24h_at=None if volume is None else volume[1],
            fees_24h_at=None if fees is None else fees[1],
            volume_24h_change_1d=change(DAY, "volume_24h"),
            volume_24h_change_7d=change(7 * DAY, "volume_24h"),
            fees_24h_change_1d=change(DAY, "fees_24h"),
            fees_24h_change_7d=change(7 * DAY, "fees_24h"),
        )

    def list(self, query: ProtocolQuery) -> tuple[list[ProtocolView], int]:
        def tvl(view: ProtocolView) -> float | None:
            """With a chain: the TVL on it (its own figure, or the total of a protocol
            listed on that chain alone); else the total."""
            if query.chain is None:
                return view.tvl
            if view.chain_tvls:
                return view.chain_tvls.get(query.chain)
            return view.tvl if list(view.chains) == [query.chain] else None

        selected = [
            view
            for view in self.protocols.values()
            if (query.chain is None or query.chain in view.chains or query.chain in view.chain_tvls)
            and (query.category is None or view.category.lower() == query.category.lower())
            and (query.min_tvl is None or ((t := tvl(view)) is not None and t >= query.min_tvl))
        ]

        def value(view: ProtocolView) -> Any:
            if query.sort == "tvl":
                return tvl(view)
            return view.name.lower() if query.sort == "name" else getattr(view, query.sort)

        def compare(a: ProtocolView, b: ProtocolView) -> int:
            va, vb = value(a), value(b)
            if (va is None) != (vb is None):
                return 1 if va is None else -1
            if va is not None and va != vb:
                smaller = -1 if va < vb else 1
                return -smaller if query.descending else smaller
            return -1 if a.slug < b.slug else 1

        ordered = sorted(selected, key=functools.cmp_to_key(compare))
        return ordered[query.offset : query.offset + query.limit], len(ordered)

    def latest_prices(self, limit: int) -> list[PriceView]:
        newest_first = sorted(self.prices.values(), key=lambda v: (-v.observed_at, v.token))
        return newest_first[:limit]
