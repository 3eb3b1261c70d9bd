"""Subscriptions and the index the hub routes by.

A subscription is matched by id first (``protocolIds`` / ``tokenIds`` index it by key;
the rest wait per channel; alerts per owner), then by its other filters against what the
node's hot state says about the protocol (``FilterFacts``): its category, the chains it is
found under, its current total TVL.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from ...domain.chains import chain_key
from ...domain.observations import TOTAL
from ..hot_state import EntryFacts, HotState, ProtocolState
from .outbox import Connection
from .protocol import CHANNELS, SMART_MONEY, Filter


@dataclass(frozen=True, slots=True)
class FilterFacts:
    """What a protocol's filters are checked against (lower-cased; chains by ``chain_key``)."""

    category: str
    chains: frozenset[str]
    tvl: float | None

    @classmethod
    def of(cls, state: ProtocolState | None) -> FilterFacts | None:
        if state is None:
            return None
        tvl = state.tvl
        return cls(
            category=state.category.lower(),
            chains=frozenset(map(chain_key, state.index_chains())),
            tvl=None if tvl is None else tvl.value,
        )

    @classmethod
    def as_of(cls, key: str, facts: EntryFacts | None, state: HotState) -> FilterFacts | None:
        """The protocol ``key`` as of an entry when its facts are known, else as of now."""
        if facts is not None and isinstance(facts.state, ProtocolState):
            return cls.of(facts.state)
        return cls.of(state.protocols.get(key))


class Subscription:
    """One subscription of one connection."""

    __slots__ = (
        "acknowledged",
        "active",
        "channel",
        "coalesce",
        "connection",
        "durable",
        "exact",
        "filter",
        "floor",
        "id",
        "replaying",
        "sid",
    )

    def __init__(
        self, id: str, channel: str, filter: Filter, connection: Connection, coalesce: bool
    ) -> None:
        self.id = id
        self.sid = id.encode()
        self.channel = channel
        self.filter = filter
        # Matched by the hub's index alone (no chain, category or TVL condition).
        self.exact = filter.by_id_only
        self.connection = connection
        self.coalesce = coalesce
        self.active = True
        # While brought up to date from the log (``since``, a snapshot, or after falling
        # behind), live routing skips it; the replay switches it back to live.
        self.replaying = False
        # Updates at or before this position are not sent (the client has them: it
        # subscribed with a ``since`` beyond what this node had delivered).
        self.floor = 0
        # A durable subscription (``attach``): acknowledgements advance its stored
        # position; ``acknowledged`` is the position it was re-attached after.
        self.durable = False
        self.acknowledged: int | None = None

    @property
    def alive(self) -> bool:
        return self.active and not self.connection.closed

    def ids(self) -> frozenset[str] | None:
        """The keys it is indexed by (None: every key of its channel)."""
        return indexed_ids(self.channel, self.filter)

    def matches(self, key: str, chain: str | None, facts: FilterFacts | None) -> bool:
        """Whether an update of ``key`` (for ``chain``, on a protocol channel) passes the
        filters; ``facts`` are the protocol's (alerts: see ``SubscriptionIndex``)."""
        return filter_matches(self.channel, self.filter, key, chain, facts)


def indexed_ids(channel: str, wanted: Filter) -> frozenset[str] | None:
    """The keys a subscription to ``channel`` filtered by ``wanted`` is indexed by (None:
    every key of its channel)."""
    if channel == "prices":
        return wanted.token_ids
    if channel in ("mev", SMART_MONEY):
        # mev: every detection (no filter); smart-money: its filter chooses the trades of
        # each entry when its frame is built (realtime/smart_money.py).
        return None
    if channel == "anomalies":
        # Protocol slugs and token ids never collide (a token id has a colon).
        protocols, tokens = wanted.protocol_ids, wanted.token_ids
        if protocols is None and tokens is None:
            return None
        return (protocols or frozenset()) | (tokens or frozenset())
    return wanted.protocol_ids


def filter_matches(
    channel: str, wanted: Filter, key: str, chain: str | None, facts: FilterFacts | None
) -> bool:
    """Whether an update of ``key`` on ``channel`` (for ``chain``, on a protocol channel)
    passes ``wanted``; ``facts`` are the protocol's. The one rule for sockets and webhooks."""
    if channel == "prices":
        return wanted.token_ids is None or key in wanted.token_ids
    if channel in ("mev", SMART_MONEY):
        return True
    if channel == "anomalies":
        ids = indexed_ids(channel, wanted)
        if ids is not None and key not in ids:
            return False
        if ":" in key:  # a token's price: only ids filter it
            return wanted.by_id_only
        wanted = Filter(None, None, wanted.chains, wanted.categories, wanted.min_tvl)
    if wanted.protocol_ids is not None and key not in wanted.protocol_ids:
        return False
    if wanted.categories is not None and (facts is None or facts.category not in wanted.categories):
        return False
    if wanted.chains is not None:
        lowered = (chain or TOTAL).lower()
        if lowered == TOTAL:
            if facts is None or not (facts.chains & wanted.chains):
                return False
        elif lowered not in wanted.chains:
            return False
    if wanted.min_tvl is not None:
        tvl = facts.tvl if facts is not None else None
        if tvl is None or tvl < wanted.min_tvl:
            return False
    return True


class SubscriptionIndex:
    """Every subscription of a hub, indexed for routing."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, set[Subscription]]] = {c: {} for c in CHANNELS}
        self._unkeyed: dict[str, set[Subscription]] = {c: set() for c in CHANNELS}
        self._alerts: dict[str, set[Subscription]] = {}
        self._of_connection: dict[Connection, dict[str, Subscription]] = {}
        self._ids = itertools.count(1)

    def next_id(self) -> str:
        return f"s{next(self._ids)}"

    def of(self, connection: Connection) -> dict[str, Subscription]:
        """A connection's subscriptions by id (do not modify)."""
        return self._of_connection.get(connection, {})

    def add(self, subscription: Subscription) -> None:
        self._of_connection.setdefault(subscription.connection, {})[subscription.id] = subscription
        for bucket in self._buckets(subscription):
            bucket.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        """Forget a subscription (it sends nothing more, even from a replay under way)."""
        subscription.active = False
        mine = self._of_connection.get(subscription.connection)
        if mine is not None and mine.get(subscription.id) is subscription:
            del mine[subscription.id]
            if not mine:
                del self._of_connection[subscription.connection]
        for bucket in self._buckets(subscription, create=False):
            bucket.discard(subscription)
        if subscription.channel == "alerts":
            owner = subscription.connection.owner or ""
            if not self._alerts.get(owner, True):
                del self._alerts[owner]
        else:
            index = self._by_key[subscription.channel]
            for key in subscription.ids() or ():
                if not index.get(key, True):
                    del index[key]

    def _buckets(self, subscription: Subscription, create: bool = True) -> list[set[Subscription]]:
        channel = subscription.channel
        if channel == "alerts":
            owner = subscription.connection.owner or ""
            bucket = self._alerts.setdefault(owner, set()) if create else self._alerts.get(owner)
            return [bucket] if bucket is not None else []
        ids = subscription.ids()
        if ids is None:
            return [self._unkeyed[channel]]
        index = self._by_key[channel]
        if create:
            return [index.setdefault(key, set()) for key in ids]
        return [index[key] for key in ids if key in index]

    def has_subscribers(self, channel: str) -> bool:
        return bool(self._unkeyed[channel] or self._by_key[channel])

    def candidates(self, channel: str, key: str, owner: str | None) -> Iterable[Subscription]:
        """The subscriptions an update of ``key`` may go to (alerts: ``owner``'s)."""
        if channel == "alerts":
            return self._alerts.get(str(owner), ())
        keyed = self._by_key[channel].get(key)
        unkeyed = self._unkeyed[channel]
        if keyed and unkeyed:
            return itertools.chain(keyed, unkeyed)
        return keyed or unkeyed

    def of_channel(self, channel: str) -> set[Subscription]:
        found: set[Subscription] = set(self._unkeyed[channel])
        for bucket in self._by_key[channel].values():
            found |= bucket
        if channel == "alerts":
            for bucket in self._alerts.values():
                found |= bucket
        return found
