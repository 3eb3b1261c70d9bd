"""``PriceHistory`` on SQLAlchemy 2 Core: the history read model's ``price_observations``.

One code path for SQLite and PostgreSQL, on the engine of ``SqlHistoryReadModel`` (which
owns it: this class opens connections, never creates or disposes of an engine).

Every read is index-driven on ``ix_price_observations_series (token, observed_at)``, so its
cost grows with the number of tokens and lookups asked for, not with the length of a
token's history:

1. the time of each answer: one statement for a whole chunk of lookups, a correlated
   ``max``/``min(observed_at)`` per lookup over a ``targets`` CTE (a ``VALUES`` list
   of bound rows): an index probe each, one round trip for the chunk;
2. the rows at those times: ``(token, observed_at) IN (...)``, where the highest position
   wins (several observations at one time: the latest recorded is the correction).

A ``ROW_NUMBER()`` over each token's observations (as ``series`` does) would read the whole
history of every token asked for; PostgreSQL's planner does not skip through an index for a
``GROUP BY token`` either, hence the correlated probes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Double, Integer, Text, column, func, select, tuple_, values
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select
from sqlalchemy.sql.selectable import CTE
from sqlalchemy.types import TypeEngine

from ..application.ports import PriceLookup, PricePoint
from .sql_schema import PRICE_OBSERVATIONS

__all__ = ["SqlPriceHistory"]

# Lookups per statement: five bound values each, well under SQLite's 32,766 variables per
# statement, and a statement PostgreSQL plans in a few milliseconds (a UNION ALL of as
# many SELECTs took it ~50 ms).
_CHUNK: Final = 500
# (token, observed_at) pairs per IN list: two bound parameters each, well under SQLite's
# 32,766 variables per statement.
_PAIR_CHUNK: Final = 500

_OBS = PRICE_OBSERVATIONS


class SqlPriceHistory:
    """Price reads by token and time over ``engine`` (synchronous: call from a thread).

    Implements the ``PriceHistory`` port. Tokens are matched exactly as stored: the log
    hands the read model canonical ids (``canonical_token_id``)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def latest(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        """Each token's price with the largest ``observed_at``."""
        return self._edge(tokens, newest=True)

    def first(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        """Each token's price with the smallest ``observed_at``."""
        return self._edge(tokens, newest=False)

    def nearest(self, lookups: Sequence[PriceLookup]) -> list[PricePoint | None]:
        """Per lookup, the observation nearest to ``at`` within ``width`` either side (the
        earlier of two equally near ones, as DeFiLlama picks), or None."""
        if not lookups:
            return []
        times: list[float | None] = []
        with self._engine.connect() as connection:
            for start in range(0, len(lookups), _CHUNK):
                chunk = lookups[start : start + _CHUNK]
                around = {
                    int(row.idx): (row.before, row.after)
                    for row in connection.execute(_around(chunk))
                }
                for index, lookup in enumerate(chunk):
                    before, after = around.get(index, (None, None))
                    times.append(_nearer(lookup.at, _number(before), _number(after)))
            found = _rows(
                connection,
                [
                    (lookup.token, stamp)
                    for lookup, stamp in zip(lookups, times, strict=True)
                    if stamp is not None
                ],
            )
        # .get: a row gone between the two statements (a rebuild's reset) is no answer.
        return [
            None if stamp is None else found.get((lookup.token, stamp))
            for lookup, stamp in zip(lookups, times, strict=True)
        ]

    # -- internals -----------------------------------------------------------------------

    def _edge(self, tokens: Sequence[str], *, newest: bool) -> dict[str, PricePoint]:
        wanted = list(dict.fromkeys(tokens))
        if not wanted:
            return {}
        edge = func.max if newest else func.min
        stamps: dict[str, float] = {}
        with self._engine.connect() as connection:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                targets = _targets(
                    [{"idx": index, "token": token} for index, token in enumerate(chunk)]
                )
                stamp = (
                    select(edge(_OBS.c.observed_at))
                    .where(_OBS.c.token == targets.c.token)
                    .scalar_subquery()
                )
                for row in connection.execute(select(targets.c.idx, stamp.label("stamp"))):
                    if row.stamp is not None:
                        stamps[chunk[int(row.idx)]] = float(row.stamp)
            found = _rows(connection, list(stamps.items()))
        points = {token: found.get((token, stamp)) for token, stamp in stamps.items()}
        return {token: point for token, point in points.items() if point is not None}


_TARGET_COLUMNS: Final[dict[str, TypeEngine[Any]]] = {
    "idx": Integer(),
    "token": Text(),
    "lo": Double(),
    "at": Double(),
    "hi": Double(),
}


def _targets(rows: Sequence[dict[str, Any]]) -> CTE:
    """``rows`` as ``WITH targets(...) AS (VALUES ...)`` (every row has the same keys, a
    prefix of ``_TARGET_COLUMNS``): both backends' syntax, one bound row each."""
    names = list(rows[0])
    table = values(*(column(name, _TARGET_COLUMNS[name]) for name in names), name="targets")
    return table.data([tuple(row[name] for name in names) for row in rows]).cte("targets")


def _around(lookups: Sequence[PriceLookup]) -> Select[Any]:
    """Per lookup (``idx``): the last observation time in ``[at - width, at]`` (``before``)
    and the first in ``[at, at + width]`` (``after``), each null if there is none."""
    targets = _targets(
        [
            {
                "idx": index,
                "token": lookup.token,
                "lo": lookup.at - lookup.width,
                "at": lookup.at,
                "hi": lookup.at + lookup.width,
            }
            for index, lookup in enumerate(lookups)
        ]
    )
    same_token = _OBS.c.token == targets.c.token
    before = (
        select(func.max(_OBS.c.observed_at))
        .where(same_token, _OBS.c.observed_at >= targets.c.lo, _OBS.c.observed_at <= targets.c.at)
        .scalar_subquery()
    )
    after = (
        select(func.min(_OBS.c.observed_at))
        .where(same_token, _OBS.c.observed_at >= targets.c.at, _OBS.c.observed_at <= targets.c.hi)
        .scalar_subquery()
    )
    return select(targets.c.idx, before.label("before"), after.label("after"))


def _nearer(at: float, before: float | None, after: float | None) -> float | None:
    """The nearer of the two times to ``at``; the earlier one on a tie."""
    if before is None or after is None:
        return before if after is None else after
    return before if at - before <= after - at else after


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _rows(
    connection: Connection, pairs: Iterable[tuple[str, float]]
) -> dict[tuple[str, float], PricePoint]:
    """The observation at each ``(token, observed_at)``: of several, the highest position."""
    unique = list(dict.fromkeys(pairs))
    found: dict[tuple[str, float], PricePoint] = {}
    for chunk in _chunks(unique, _PAIR_CHUNK):
        statement = select(
            _OBS.c.token, _OBS.c.observed_at, _OBS.c.price, _OBS.c.confidence, _OBS.c.position
        ).where(tuple_(_OBS.c.token, _OBS.c.observed_at).in_(chunk))
        for row in connection.execute(statement):
            key = (row.token, float(row.observed_at))
            held = found.get(key)
            if held is None or row.position > held.position:
                found[key] = PricePoint(
                    token=row.token,
                    timestamp=float(row.observed_at),
                    price=float(row.price),
                    confidence=None if row.confidence is None else float(row.confidence),
                    position=int(row.position),
                )
    return found


def _chunks(items: Sequence[tuple[str, float]], size: int) -> Iterator[Sequence[tuple[str, float]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
