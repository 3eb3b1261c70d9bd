"""The Protocol aggregate: a listed DeFi protocol and its metric observations."""

from __future__ import annotations

import functools
import re
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import InvalidObservation
from .observations import TOTAL, check_label, check_metric, check_timestamp, check_value

SLUG_PATTERN: Final = r"^[a-z0-9][^\s/?#%A-Z]{0,199}$"
_SLUG = re.compile(SLUG_PATTERN)
PROTOCOL_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/protocol/")


def check_slug(slug: str) -> str:
    """A slug is lower-case, starts with a letter or digit, has no whitespace or URL syntax."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise InvalidObservation(
            f"invalid protocol slug {slug!r}: lower-case letters, digits and '-' (max 200)"
        )
    return slug


def slugify(name: str) -> str:
    """DeFiLlama's slug rule for a protocol name: lower-case, spaces become '-'."""
    return "-".join(name.strip().lower().split())


def _check_chains(chains: list[str]) -> list[str]:
    if not isinstance(chains, list):
        raise InvalidObservation("chains must be a list of chain names")
    return [check_label(chain, what="chain") for chain in chains]


class Protocol(Aggregate):
    """A DeFi protocol, identified by its slug (e.g. ``aave-v3``).

    Invariants: values are finite and non-negative; an identical repeated observation is a
    no-op; an observation older than the current one enters history but does not move the
    current value.
    """

    @staticmethod
    def create_id(slug: str, *_: Any, **__: Any) -> UUID:
        return uuid5(PROTOCOL_NAMESPACE, slug)

    @staticmethod
    @functools.lru_cache(maxsize=65_536)
    def id_for(slug: str) -> UUID:
        # Cached: ingest derives it for every item, and uuid5 hashes each time.
        return uuid5(PROTOCOL_NAMESPACE, slug)

    @event("Listed")
    def __init__(self, slug: str, name: str, category: str, chains: list[str], url: str) -> None:
        self.slug = slug
        self.name = name
        self.category = category
        self.chains = list(chains)
        self.url = url
        # (metric, chain) -> (value, observed_at) of the newest observation.
        self.current: dict[tuple[str, str], tuple[float, float]] = {}
        # (metric, chain, observed_at) -> value of every observation ever recorded.
        self.history: dict[tuple[str, str, float], float] = {}

    @classmethod
    def create(
        cls,
        slug: str,
        name: str,
        category: str = "",
        chains: list[str] | None = None,
        url: str = "",
    ) -> Protocol:
        """List a new protocol (command)."""
        check_slug(slug)
        check_label(name, what="name")
        return cls(
            slug=slug,
            name=name,
            category=category or "",
            chains=_check_chains(chains or []),
            url=url or "",
        )

    def update_details(
        self,
        name: str | None = None,
        category: str | None = None,
        chains: list[str] | None = None,
        url: str | None = None,
    ) -> bool:
        """Change listing details; returns False (and records nothing) if nothing changes."""
        new_name = check_label(name, what="name") if name is not None else self.name
        new_category = category if category is not None else self.category
        new_chains = _check_chains(chains) if chains is not None else self.chains
        new_url = url if url is not None else self.url
        if (new_name, new_category, new_chains, new_url) == (
            self.name,
            self.category,
            self.chains,
            self.url,
        ):
            return False
        self._details_updated(self.slug, new_name, new_category, new_chains, new_url)
        return True

    # Events name the slug as well as the aggregate id: downstream consumers (projections,
    # WebSocket clients) work with slugs and should not need a lookup to read a fact.
    @event("DetailsUpdated")
    def _details_updated(
        self, slug: str, name: str, category: str, chains: list[str], url: str
    ) -> None:
        self.name = name
        self.category = category
        self.chains = list(chains)
        self.url = url

    def record_metric(
        self,
        metric: str,
        chain: str,
        value: float,
        observed_at: float,
        source: str = "",
    ) -> bool:
        """Record one observation; returns False if it is an identical repeat (a no-op)."""
        check_metric(metric)
        check_label(chain, what="chain")
        number = check_value(value)
        stamp = check_timestamp(observed_at)
        if self.history.get((metric, chain, stamp)) == number:
            return False
        self.trigger_event(
            self.MetricRecorded,
            slug=self.slug,
            metric=metric,
            chain=chain,
            value=number,
            observed_at=stamp,
            source=source or "",
        )
        return True

    # An explicit event class rather than ``@event`` on a method: the decorator maps call
    # arguments to event fields and back (``_coerce_args_to_kwargs``, two
    # ``filter_kwargs_for_method_params`` per event), half of ``record_metric``'s cost; this is
    # the event ingest creates most. Same qualified name, so the same stored topic.
    class MetricRecorded(Aggregate.Event):
        slug: str
        metric: str
        chain: str
        value: float
        observed_at: float
        source: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Protocol)
            aggregate._apply_metric(self.metric, self.chain, self.value, self.observed_at)

    def _apply_metric(self, metric: str, chain: str, value: float, observed_at: float) -> None:
        self.history[(metric, chain, observed_at)] = value
        current = self.current.get((metric, chain))
        # A late observation is history only; ties go to the newest recording (a correction).
        if current is None or observed_at >= current[1]:
            self.current[(metric, chain)] = (value, observed_at)
        if chain != TOTAL and chain not in self.chains:
            self.chains.append(chain)

    def current_value(self, metric: str = "tvl", chain: str = TOTAL) -> float | None:
        current = self.current.get((metric, chain))
        return None if current is None else current[0]
