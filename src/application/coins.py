"""DeFiLlama's coins API (coins.llama.fi) over our price history: what each answer means.

The definitions are DeFiLlama's (its server, ``defillama-server/coins/src``), so a client
pointed at our base URL gets the answers it expects:

* current: a token's latest price, if it is at most ``searchWidth`` old (default 6 hours);
* historical (and each timestamp of a batch): the price observed nearest to the time asked,
  at most ``searchWidth`` before or after it (default 6 hours; the earlier of two equally
  near prices);
* chart: ``span`` points ``period`` apart, forward from ``start`` or back from ``end`` (now
  when neither is given), each the price nearest to its time within ``searchWidth``
  (default a tenth of ``period``); points that find the same price count once;
* percentage: the change between the prices nearest to ``timestamp`` and to ``timestamp``
  minus (or, with ``lookForward``, plus) ``period``, each within 15 minutes, scaled to the
  requested ``period`` when the two prices are not exactly that far apart;
* first: a token's earliest price.

A coin without a price is left out of an answer. Durations are DeFiLlama's: a number of
seconds (``600``) or a number and a unit, ``w``, ``d``, ``h`` or ``m`` (minutes), any case
(``4h``, ``2D``, ``1w``; a unit alone means one of it).

Answers are keyed by the coin ids as the request spelled them, while the history is read by
their canonical ids (``canonical_token_id``): ``ethereum:0xA0b8...`` and
``ethereum:0xa0b8...`` are one token.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

from ..domain.observations import OBSERVED_AT_RANGE
from ..domain.token import canonical_token_id
from .ports import PriceHistory, PriceLookup, PricePoint

T = TypeVar("T")

__all__ = [
    "DEFAULT_PERIOD",
    "DEFAULT_SEARCH_WIDTH",
    "DURATION_PATTERN",
    "MAX_COINS",
    "MAX_DURATION",
    "MAX_POINTS",
    "MAX_TIME",
    "PERCENTAGE_SEARCH_WIDTH",
    "CoinPriceReader",
    "CoinQueryError",
    "chart_times",
    "parse_duration",
    "percent_change",
]

MAX_COINS: Final = 100
"""Coins one request may name."""
MAX_POINTS: Final = 500
"""Prices one chart or batch request may look up: coins x timestamps (DeFiLlama's own
bound for a chart)."""
MAX_DURATION: Final = 10 * 365 * 86_400.0
"""The longest ``period`` or ``searchWidth`` (10 years)."""
MAX_TIME: Final = OBSERVED_AT_RANGE[1]
"""The latest time a request may name (2100-01-01): the latest time a price can have."""
DEFAULT_SEARCH_WIDTH: Final = 6 * 3_600.0
DEFAULT_PERIOD: Final = 86_400.0
PERCENTAGE_SEARCH_WIDTH: Final = 900.0
"""DeFiLlama's fixed width for /percentage: each end's price within 15 minutes."""

_UNITS: Final = {"w": 604_800.0, "d": 86_400.0, "h": 3_600.0, "m": 60.0}
DURATION_PATTERN: Final = r"^(?:[0-9]+(?:\.[0-9]+)?)?[wdhmWDHM]?$"
"""A duration as DeFiLlama writes it (an ECMA-262 pattern too, for the OpenAPI document);
the empty string, which it also matches, is no duration (the default)."""
_DURATION: Final = re.compile(DURATION_PATTERN)


class CoinQueryError(ValueError):
    """A request the coins API refuses (too much work, parameters that exclude each
    other); ``parameters`` names the query parameters at fault."""

    def __init__(self, message: str, *parameters: str) -> None:
        super().__init__(message)
        self.parameters = parameters


def parse_duration(text: str) -> float:
    """``text`` (``600``, ``4h``, ``2d``, ``1w``, ``30m``, ``h``) as seconds; ValueError
    for anything else."""
    if not text or not _DURATION.fullmatch(text):
        raise ValueError(
            "must be a duration: seconds (600) or a number with w, d, h or m (4h, 2d, 1w)"
        )
    unit = text[-1].lower()
    if unit in _UNITS:
        number = text[:-1]
        return (float(number) if number else 1.0) * _UNITS[unit]
    return float(text)


def chart_times(origin: float, *, forward: bool, period: float, span: int) -> list[float]:
    """DeFiLlama's chart times: ``span`` times (at least one) ``period`` apart from
    ``origin``, forward or back, oldest first."""
    step = period if forward else -period
    times = [origin + step * index for index in range(max(span, 1))]
    return times if forward else times[::-1]


def percent_change(earlier: PricePoint, later: PricePoint, requested: float) -> float | None:
    """The percent change from ``earlier`` to ``later``, scaled to ``requested`` seconds
    (DeFiLlama's definition); None when it cannot be computed (one price twice, or a zero
    price to start from)."""
    elapsed = later.timestamp - earlier.timestamp
    if elapsed <= 0 or earlier.price == 0:
        return None
    change = 100.0 * (later.price - earlier.price) / earlier.price * requested / elapsed
    return change if math.isfinite(change) else None


class CoinPriceReader:
    """The coins API's reads over a ``PriceHistory`` (synchronous: call from a thread).

    ``coins`` arguments are checked coin ids as the request spelled them; each answer maps
    those spellings (each once, in the order given) to what was found."""

    def __init__(self, history: PriceHistory, now: Callable[[], float] = time.time) -> None:
        self._history = history
        self._now = now

    def current(
        self, coins: Sequence[str], search_width: float | None = None
    ) -> dict[str, PricePoint]:
        """The latest price of each coin, if it is at most ``search_width`` (default
        ``DEFAULT_SEARCH_WIDTH``) old."""
        _check_coins(coins)
        width = DEFAULT_SEARCH_WIDTH if search_width is None else search_width
        latest = self._history.latest(_canonical(coins))
        now = self._now()
        return {
            coin: point
            for coin, point in _by_request(coins, latest)
            if now - point.timestamp <= width
        }

    def historical(
        self, coins: Sequence[str], at: float, search_width: float | None = None
    ) -> dict[str, PricePoint]:
        """Each coin's price nearest to ``at``, within ``search_width`` (default
        ``DEFAULT_SEARCH_WIDTH``) either side."""
        _check_coins(coins)
        width = DEFAULT_SEARCH_WIDTH if search_width is None else search_width
        tokens = _canonical(coins)
        found = self._history.nearest([PriceLookup(token, at, width) for token in tokens])
        by_token = {token: point for token, point in zip(tokens, found, strict=True) if point}
        return dict(_by_request(coins, by_token))

    def batch(
        self, wanted: Mapping[str, Sequence[float]], search_width: float | None = None
    ) -> dict[str, list[PricePoint]]:
        """For each coin, its price nearest to each of its timestamps (in their order; one
        price per timestamp that finds one), within ``search_width`` (default
        ``DEFAULT_SEARCH_WIDTH``) either side."""
        _check_coins(list(wanted))
        width = DEFAULT_SEARCH_WIDTH if search_width is None else search_width
        total = sum(len(stamps) for stamps in wanted.values())
        if total > MAX_POINTS:
            raise CoinQueryError(
                f"coins asks for {total} prices; at most {MAX_POINTS} per request", "coins"
            )
        lookups = [
            PriceLookup(canonical_token_id(coin), at, width)
            for coin, stamps in wanted.items()
            for at in stamps
        ]
        found = iter(self._history.nearest(lookups))
        answer: dict[str, list[PricePoint]] = {}
        for coin, stamps in wanted.items():
            points = [point for point in (next(found) for _ in stamps) if point is not None]
            if points:
                answer[coin] = points
        return answer

    def chart(
        self,
        coins: Sequence[str],
        *,
        start: float | None = None,
        end: float | None = None,
        span: int = 0,
        period: float | None = None,
        search_width: float | None = None,
    ) -> dict[str, list[PricePoint]]:
        """Each coin's prices at ``chart_times`` (see the module's docstring), oldest
        first, each price once."""
        _check_coins(coins)
        period = DEFAULT_PERIOD if period is None else period
        if start is not None and end is not None:
            raise CoinQueryError("use either start or end, not both", "start", "end")
        if start is None:
            times = chart_times(
                self._now() if end is None else end, forward=False, period=period, span=span
            )
        else:
            times = chart_times(start, forward=True, period=period, span=span)
        tokens = _canonical(coins)
        if len(tokens) * len(times) > MAX_POINTS:
            raise CoinQueryError(
                f"{len(tokens)} coins x {len(times)} points is more than {MAX_POINTS} prices "
                "per request: ask for fewer coins or a smaller span",
                "span",
            )
        width = period / 10 if search_width is None else search_width
        found = self._history.nearest(
            [PriceLookup(token, at, width) for token in tokens for at in times]
        )
        by_token: dict[str, list[PricePoint]] = {}
        for index, token in enumerate(tokens):
            row = found[index * len(times) : (index + 1) * len(times)]
            unique = {point.timestamp: point for point in row if point is not None}
            if unique:
                by_token[token] = [unique[stamp] for stamp in sorted(unique)]
        return dict(_by_request(coins, by_token))

    def percentage(
        self,
        coins: Sequence[str],
        *,
        timestamp: float | None = None,
        look_forward: bool = False,
        period: float | None = None,
    ) -> dict[str, float]:
        """Each coin's percent price change over ``period`` before (or, with
        ``look_forward``, after) ``timestamp`` (default now); see ``percent_change``."""
        _check_coins(coins)
        period = DEFAULT_PERIOD if period is None else period
        origin = self._now() if timestamp is None else timestamp
        other = origin + period if look_forward else origin - period
        earlier_at, later_at = sorted((origin, other))
        tokens = _canonical(coins)
        found = self._history.nearest(
            [
                PriceLookup(token, at, PERCENTAGE_SEARCH_WIDTH)
                for token in tokens
                for at in (earlier_at, later_at)
            ]
        )
        changes: dict[str, float] = {}
        for index, token in enumerate(tokens):
            earlier, later = found[2 * index], found[2 * index + 1]
            if earlier is None or later is None:
                continue
            change = percent_change(earlier, later, later_at - earlier_at)
            if change is not None:
                changes[token] = change
        return dict(_by_request(coins, changes))

    def first(self, coins: Sequence[str]) -> dict[str, PricePoint]:
        """Each coin's earliest price."""
        _check_coins(coins)
        return dict(_by_request(coins, self._history.first(_canonical(coins))))


def _check_coins(coins: Sequence[str]) -> None:
    if not coins:
        raise CoinQueryError("coins must name at least one coin", "coins")
    if len(coins) > MAX_COINS:
        raise CoinQueryError(
            f"coins names {len(coins)} coins; at most {MAX_COINS} per request", "coins"
        )


def _canonical(coins: Iterable[str]) -> list[str]:
    """The canonical ids of ``coins``, each once, in order."""
    return list(dict.fromkeys(canonical_token_id(coin) for coin in coins))


def _by_request(coins: Iterable[str], by_token: Mapping[str, T]) -> Iterable[tuple[str, T]]:
    """``(coin as requested, what was found for its token)`` for each coin found."""
    for coin in dict.fromkeys(coins):
        found = by_token.get(canonical_token_id(coin))
        if found is not None:
            yield coin, found
