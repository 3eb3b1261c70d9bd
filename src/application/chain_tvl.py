"""What a chain's TVL is made of, as DeFiLlama defines it, from what we hold.

DeFiLlama's chain TVL (``/v2/chains``, ``/v2/historicalChainTvl``) is the sum, over the
protocols listed on the chain, of each protocol's TVL on that chain. Left out
(``NOT_IN_TVL``): centralised exchanges and chains themselves, and bridges ("we count the
TVL of bridge projects but do not contribute them towards the TVL of any chain", DeFiLlama's
methodology). Left out as well, as DeFiLlama's default view does, TVL already counted in
another protocol's: liquid staking and "double counted" protocols (``DOUBLE_COUNTED``).
DeFiLlama flags double counting per protocol; the captures we ingest do not carry that
flag, so it is decided here by category, an approximation (see docs/defillama-api.md).

A protocol's TVL on a chain is its own value for that chain when it reports one; a protocol
that lists exactly one chain and reports only a total has that total on its chain. A
multi-chain protocol with only a total cannot be split: it counts in the all-chains total
but in no single chain (``ChainTotals.unattributed`` says how much that is).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..domain.chains import chain_key
from .views import ProtocolView

__all__ = [
    "CARRY_DAYS",
    "DAY",
    "DOUBLE_COUNTED",
    "NOT_IN_TVL",
    "ChainTotals",
    "DailyValue",
    "Listing",
    "chain_totals",
    "counts_in_chain_tvl",
    "daily_chain_tvl",
    "tvl_by_chain",
]

DAY: Final = 86_400
# How many days a protocol's last value stands in for days without an observation.
CARRY_DAYS: Final = 7
# Categories DeFiLlama leaves out of every chain's TVL.
NOT_IN_TVL: Final = frozenset({"cex", "chain", "bridge", "canonical bridge"})
# Categories whose TVL is deposited in, or the receipt of, another protocol's (DeFiLlama's
# default view leaves liquid staking and double counting out).
DOUBLE_COUNTED: Final = frozenset(
    {
        "liquid staking",
        "liquid restaking",
        "restaking",
        "yield aggregator",
        "yield",
        "onchain capital allocator",
        "risk curators",
    }
)


def counts_in_chain_tvl(category: str) -> bool:
    """Whether protocols of ``category`` count in chain TVL."""
    folded = category.strip().casefold()
    return folded not in NOT_IN_TVL and folded not in DOUBLE_COUNTED


def tvl_by_chain(
    chains: Sequence[str], chain_tvls: Mapping[str, float], tvl: float | None
) -> dict[str, float]:
    """A protocol's TVL on each chain it can be attributed to (see the module's rule)."""
    if chain_tvls:
        return dict(chain_tvls)
    if tvl is not None and len(chains) == 1:
        return {chains[0]: tvl}
    return {}


@dataclass(frozen=True, slots=True)
class ChainTotals:
    """Current TVL per chain (canonical names), and what no single chain could take."""

    by_chain: dict[str, float]
    total: float
    unattributed: float


def chain_totals(views: Iterable[ProtocolView]) -> ChainTotals:
    by_chain: dict[str, float] = defaultdict(float)
    total = unattributed = 0.0
    for view in views:
        if view.tvl is None and not view.chain_tvls:
            continue
        if not counts_in_chain_tvl(view.category):
            continue
        split = tvl_by_chain(view.chains, view.chain_tvls, view.tvl)
        for chain, value in split.items():
            by_chain[chain] += value
        whole = view.tvl if view.tvl is not None else math.fsum(split.values())
        total += whole
        if not split:
            unattributed += whole
    return ChainTotals(dict(by_chain), total, unattributed)


@dataclass(frozen=True, slots=True)
class Listing:
    """What the daily sums need to know of a protocol."""

    slug: str
    category: str
    chains: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DailyValue:
    """A protocol's last value of one day (``day``: days since the epoch) on ``chain``."""

    protocol: str
    chain: str
    day: int
    value: float


def daily_chain_tvl(
    values: Iterable[DailyValue], listings: Mapping[str, Listing], chain: str | None
) -> list[tuple[int, float]]:
    """``(day start, tvl)`` per day, oldest first: the sum over protocols of each one's
    value that day on ``chain`` (None: every chain, from the protocols' totals).

    A protocol's value on a day is its last observation of the day or, on a day without
    one, its last earlier value for up to ``CARRY_DAYS`` days (captures are irregular: a
    day without a capture must not look like a crash of every protocol on it). Days run
    from the first observed to the last observed.

    ``values`` holds the ``total`` series and, for a chain, that chain's series. A protocol
    with a series of its own on the chain is summed from it; one listed on that chain alone
    is summed from its total (``tvl_by_chain``'s rule, day by day)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for protocol, row in _counted(list(values), listings, chain):
        series[protocol][row.day] = row.value
    if not series:
        return []
    last_day = max(max(days) for days in series.values())
    sums: dict[int, float] = defaultdict(float)
    for days in series.values():
        ordered = sorted(days)
        for index, day in enumerate(ordered):
            until = ordered[index + 1] if index + 1 < len(ordered) else last_day + 1
            for filled in range(day, min(until, day + CARRY_DAYS + 1)):
                sums[filled] += days[day]
    return [(day * DAY, sums[day]) for day in sorted(sums)]


def _counted(
    rows: Sequence[DailyValue], listings: Mapping[str, Listing], chain: str | None
) -> Iterator[tuple[str, DailyValue]]:
    """The rows that make up ``chain``'s TVL, with their protocol."""
    wanted = None if chain is None else chain_key(chain)
    own_series = set()
    if wanted is not None:
        own_series = {row.protocol for row in rows if chain_key(row.chain) == wanted}
    for row in rows:
        listing = listings.get(row.protocol)
        if not counts_in_chain_tvl("" if listing is None else listing.category):
            continue
        if wanted is None:
            if row.chain != "total":
                continue
        elif row.chain == "total":
            only = listing.chains if listing is not None and len(listing.chains) == 1 else ()
            if row.protocol in own_series or not (only and chain_key(only[0]) == wanted):
                continue
        elif chain_key(row.chain) != wanted:
            continue
        yield row.protocol, row
