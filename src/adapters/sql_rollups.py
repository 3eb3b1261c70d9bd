"""The history projection's rollups in SQL (ADR 0021): series states, day closes, group days.

``SqlRollups.apply`` runs inside the history read model's ``apply`` transaction, after the
raw rows are written, so the rollups move with the tracking position: exactly once, and a
rebuild of the projection rebuilds them. The rules are pure and live in the application
(``series_states.restate``, ``aggregate.contributions``); this module reads the rows they
need and writes what they return. Upserts are ``INSERT ... ON CONFLICT``, one statement per
table and batch on PostgreSQL (``sql_bulk``); group sums move by deltas in the same statement.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import delete, select, text
from sqlalchemy.engine import Connection, Engine, Row

from ..application.aggregate import BucketValue, GroupDay, contributions
from ..application.chain_tvl import CARRY_DAYS, DAY, Listing
from ..application.series_states import (
    CHANGE_SPAN,
    OPEN,
    Recording,
    SeriesKey,
    SeriesState,
    has_changes,
    restate,
)
from ..application.views import CHANGE_WINDOWS
from .sql_bulk import BulkWriter
from .sql_schema import GROUP_DAYS, PROTOCOL_OBSERVATIONS, PROTOCOLS, SERIES_DAYS, SERIES_STATES

__all__ = ["SqlRollups"]

# Keys per statement: IN lists (SQLite caps bound variables per statement), and keys passed
# as one JSON document.
_CHUNK: Final = 200
_KEYS_CHUNK: Final = 5_000
# Raw observations read per step when the rollups are filled from them.
_REBUILD_PAGE: Final = 20_000
# "Every day" of a protocol whose listing changed (days since the epoch; fits an INTEGER).
_ALL_DAYS: Final = 10**9
_DayKey = tuple[str, str, str, int]
"""(protocol, metric, chain, day)."""
_Close = tuple[float, float, int]
"""A series' last recording of a day: (value, observed_at, position)."""
_Deltas = dict[tuple[str, str, str, int], list[float]]
"""(dimension, group, metric, day) -> [total, counted, members] to add."""
_NOTHING: Final = (0.0, 0, 0)
# Join conditions of the probe queries: a state of ``k``'s series; one at ``t``'s time.
_SAME_B: Final = "b.protocol = k.protocol AND b.metric = k.metric AND b.chain = k.chain"
_SAME_T: Final = "st.protocol = t.protocol AND st.metric = t.metric AND st.chain = t.chain"
# PostgreSQL's forms of the probes: one index descent per key whatever the statistics. The
# joins above, planned on a series_states without statistics yet (a new or just-reset
# projection, until autovacuum analyzes it), hash-join a sequential scan of the whole table:
# every batch then reads every state (ADR 0056). Each subquery sorts, so that the planner
# does not pull it up into that join again. SQLite has no LATERAL, nor hash joins.
_LATERAL_NEAREST: Final = f"""SELECT b.* FROM k CROSS JOIN LATERAL (
        SELECT * FROM series_states b WHERE {_SAME_B}
        AND b.observed_at <= k.cutoff AND b.observed_at >= k.low
        ORDER BY b.observed_at DESC LIMIT 1) b
    UNION ALL
    SELECT b.* FROM k CROSS JOIN LATERAL (
        SELECT * FROM series_states b WHERE {_SAME_B}
        AND b.observed_at >= k.cutoff AND b.observed_at <= k.high
        ORDER BY b.observed_at LIMIT 1) b"""
_LATERAL_FROM: Final = f"""SELECT b.* FROM k CROSS JOIN LATERAL (
        SELECT * FROM series_states b WHERE {_SAME_B} AND b.observed_at >= :low
        ORDER BY b.observed_at) b
    UNION ALL
    SELECT b.* FROM k CROSS JOIN LATERAL (
        SELECT * FROM series_states b WHERE {_SAME_B} AND b.observed_at < :low
        ORDER BY b.observed_at DESC LIMIT 1) b"""
_STATE_FIELDS: Final = (
    "value",
    "position",
    "first_position",
    "valid_to",
    "change_1h",
    "change_1d",
    "change_7d",
)
_ROLLUP_TABLES: Final = (SERIES_STATES, SERIES_DAYS, GROUP_DAYS)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _state(row: Row[Any]) -> SeriesState:
    # The table's columns are SeriesState's fields, in order.
    return SeriesState._make(row)


# The key columns of a series.
_SERIES: Final = ("protocol", "metric", "chain")


def _read_states(
    connection: Connection,
    names: Sequence[str],
    keys: Sequence[Sequence[Any]],
    select: str,
    **parameters: Any,
) -> Iterator[SeriesState]:
    """The states ``select`` finds for ``keys``: ``select`` follows ``WITH k(names) AS
    (keys)`` (``_keys_cte``: more CTEs after a comma, or the query) and returns
    ``series_states`` rows."""
    keyed, keys_parameter = _keys_cte(connection.dialect.name, names, keys)
    statement = text(f"{keyed} {select}")
    for row in connection.execute(statement, {**keys_parameter, **parameters}):
        yield _state(row)


def _close(row: Row[Any]) -> _Close:
    return (float(row.value), float(row.observed_at), int(row.position))


def _add(deltas: _Deltas, key: tuple[str, str, str, int], amounts: Sequence[float]) -> None:
    delta = deltas[key]
    for index, amount in enumerate(amounts):
        delta[index] += amount


class SqlRollups:
    """Maintains and reads the rollup tables of one history database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        dialect = engine.dialect.name
        # One statement per write whatever the row count (sql_bulk, ADR 0055).
        self._upsert_states = BulkWriter(
            dialect,
            SERIES_STATES,
            key=("protocol", "metric", "chain", "observed_at"),
            update={name: f"excluded.{name}" for name in _STATE_FIELDS},
        )
        self._upsert_closes = BulkWriter(
            dialect,
            SERIES_DAYS,
            key=("protocol", "metric", "chain", "day"),
            update={name: f"excluded.{name}" for name in ("value", "observed_at", "position")},
        )
        self._add_to_groups = BulkWriter(
            dialect,
            GROUP_DAYS,
            key=("dimension", "day", "grp", "metric"),
            update={
                name: f"group_days.{name} + excluded.{name}"
                for name in ("total", "counted", "members")
            },
        )

    # -- writing (inside the projection's transaction) --------------------------------------

    def listings(self, connection: Connection, slugs: Iterable[str]) -> dict[str, Listing]:
        found: dict[str, Listing] = {}
        for chunk in _chunks(sorted(set(slugs))):
            for row in connection.execute(
                select(PROTOCOLS.c.slug, PROTOCOLS.c.category, PROTOCOLS.c.chains).where(
                    PROTOCOLS.c.slug.in_(chunk)
                )
            ):
                found[row.slug] = Listing(row.slug, row.category, tuple(row.chains))
        return found

    def apply(
        self,
        connection: Connection,
        metrics: Sequence[Mapping[str, Any]],
        listed_before: Mapping[str, Listing | None],
    ) -> None:
        """Move the rollups by ``metrics`` (raw rows just written, in log order) and by the
        listings of ``listed_before``'s protocols (what they were before this batch)."""
        if metrics:
            self._restate(connection, metrics)
        self._add_to_group_days(
            connection, self._days_and_groups(connection, metrics, listed_before)
        )

    def rebuild(self, connection: Connection) -> None:
        """Fill the rollups from the raw observations and current listings (after the
        upgrade that added them; a projection rebuild gets them from ``apply``).

        One pass over the series index, a protocol at a time: its series restated from
        nothing, its day closes and its contributions to the group days, summed in memory
        and written once (COPY on PostgreSQL)."""
        for table in _ROLLUP_TABLES:
            connection.execute(delete(table))
        obs = PROTOCOL_OBSERVATIONS
        listings = self.listings(connection, connection.execute(select(PROTOCOLS.c.slug)).scalars())
        rows = connection.execute(
            select(
                obs.c.position,
                obs.c.protocol,
                obs.c.metric,
                obs.c.chain,
                obs.c.observed_at,
                obs.c.value,
            )
            .order_by(obs.c.protocol, obs.c.metric, obs.c.chain, obs.c.observed_at)
            .execution_options(yield_per=_REBUILD_PAGE)  # streamed
        )
        deltas: _Deltas = defaultdict(lambda: [0.0, 0, 0])
        states: list[SeriesState] = []
        closes: dict[_DayKey, _Close] = {}
        for protocol, found in itertools.groupby(rows, key=lambda row: str(row.protocol)):
            recordings: dict[SeriesKey, list[Recording]] = defaultdict(list)
            mine = _day_closes([dict(row._mapping) for row in found], recordings)
            for series_key, series in recordings.items():
                series.sort(key=lambda recording: recording.position)
                states.extend(restate(series_key, [], series))
            days = [key[3] for key in mine]
            values = [
                BucketValue(protocol, metric, chain, day, close[0])
                for (_, metric, chain, day), close in mine.items()
            ]
            span = range(min(days), max(days) + CARRY_DAYS + 1)
            for key, added in contributions(protocol, values, listings.get(protocol), span).items():
                _add(deltas, key, added)
            closes.update(mine)
            if len(states) >= _REBUILD_PAGE:
                self._bulk_write(connection, states, closes)
                states, closes = [], {}
        self._bulk_write(connection, states, closes, _group_rows(deltas))
        if self._engine.dialect.name == "postgresql":
            # Plans for the tables just filled (autovacuum sets their visibility map later,
            # which the index-only scans of a cut need; ``VACUUM`` cannot run in here).
            for table in _ROLLUP_TABLES:
                connection.execute(text(f"ANALYZE {table.name}"))

    def _bulk_write(
        self,
        connection: Connection,
        states: Sequence[SeriesState],
        closes: Mapping[_DayKey, _Close],
        group_rows: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Insert rows new to their (emptied) tables."""
        for table, found in (
            (SERIES_STATES, [state._asdict() for state in states]),
            (SERIES_DAYS, _close_rows(closes)),
            (GROUP_DAYS, group_rows),
        ):
            if not found:
                continue
            if self._engine.dialect.name != "postgresql":
                connection.execute(table.insert(), found)
                continue
            names = list(found[0])
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY {table.name} ({', '.join(names)}) FROM STDIN") as copy:
                for row in found:
                    copy.write_row([row[name] for name in names])

    def _restate(self, connection: Connection, metrics: Sequence[Mapping[str, Any]]) -> None:
        recordings: dict[SeriesKey, list[Recording]] = defaultdict(list)
        for row in metrics:
            key = (row["protocol"], row["metric"], row["chain"])
            recordings[key].append(Recording(row["observed_at"], row["value"], row["position"]))
        lows = {key: min(r.observed_at for r in found) for key, found in recordings.items()}
        heads = self._heads(connection, list(recordings))
        # Points newer than their series' newest state (live data) need that state and, on
        # a series with changes, the stored states nearest to each change window's start (what
        # ``percent_change`` can pick); the others every state from CHANGE_SPAN before.
        late = [key for key, head in heads.items() if lows[key] <= head.observed_at]
        stored = self._states_from(connection, {key: lows[key] - CHANGE_SPAN for key in late})
        cutoffs = [
            (key, recording.observed_at, window)
            for key, found in recordings.items()
            if key in heads and key not in stored and has_changes(key[1], key[2])
            for recording in found
            for window in CHANGE_WINDOWS.values()
        ]
        for key, states in self._nearest(connection, cutoffs).items():
            stored[key] = [*states, heads[key]]
        for key, head in heads.items():
            stored.setdefault(key, [head])
        changed: list[SeriesState] = []
        for key, found in recordings.items():
            states = stored.get(key, [])
            changed.extend(restate(key, states, found))
        if changed:
            self._upsert_states.write(connection, [state._asdict() for state in changed])

    @staticmethod
    def _heads(connection: Connection, keys: Sequence[SeriesKey]) -> dict[SeriesKey, SeriesState]:
        """Each series' newest state (series without one are new)."""
        found = {}
        if connection.dialect.name == "postgresql":
            select = f"""SELECT b.* FROM k CROSS JOIN LATERAL (
                SELECT * FROM series_states b WHERE {_SAME_B}
                ORDER BY b.observed_at DESC LIMIT 1) b"""
        else:
            select = f""", t AS (
                SELECT k.protocol, k.metric, k.chain, (
                    SELECT max(b.observed_at) FROM series_states b WHERE {_SAME_B}
                ) AS at FROM k)
            SELECT st.* FROM t JOIN series_states st ON {_SAME_T} AND st.observed_at = t.at"""
        for chunk in _chunks(keys, _KEYS_CHUNK):
            for state in _read_states(connection, _SERIES, chunk, select):
                found[state.key] = state
        return found

    @staticmethod
    def _nearest(
        connection: Connection, cutoffs: Sequence[tuple[SeriesKey, float, float]]
    ) -> dict[SeriesKey, list[SeriesState]]:
        """For each (series, time, window): the stored states nearest before and after
        ``time - window`` within the CHANGE_SPAN before ``time``, time-ordered per series."""
        found: dict[SeriesKey, dict[float, SeriesState]] = defaultdict(dict)
        names = ("protocol", "metric", "chain", "low", "high", "cutoff")
        for chunk in _chunks(cutoffs, _KEYS_CHUNK):
            rows = [(*key, at - CHANGE_SPAN, at, at - window) for key, at, window in chunk]
            select = (
                _LATERAL_NEAREST
                if connection.dialect.name == "postgresql"
                else f""", t AS (
                    SELECT k.protocol, k.metric, k.chain, (
                        SELECT max(b.observed_at) FROM series_states b WHERE {_SAME_B}
                        AND b.observed_at <= k.cutoff AND b.observed_at >= k.low
                    ) AS before_at, (
                        SELECT min(b.observed_at) FROM series_states b WHERE {_SAME_B}
                        AND b.observed_at >= k.cutoff AND b.observed_at <= k.high
                    ) AS after_at FROM k)
                SELECT st.* FROM t JOIN series_states st ON {_SAME_T}
                AND st.observed_at = t.before_at
                UNION ALL
                SELECT st.* FROM t JOIN series_states st ON {_SAME_T}
                AND st.observed_at = t.after_at"""
            )
            for state in _read_states(connection, names, rows, select):
                found[state.key][state.observed_at] = state
        return {key: [by_time[t] for t in sorted(by_time)] for key, by_time in found.items()}

    def _states_from(
        self, connection: Connection, lows: Mapping[SeriesKey, float]
    ) -> dict[SeriesKey, list[SeriesState]]:
        """Each series' states from its low onwards, and the one before (series of similar
        lows share a read, from the lowest)."""
        by_day: dict[int, list[SeriesKey]] = defaultdict(list)
        for key, low in lows.items():
            by_day[math.floor(low / DAY)].append(key)
        found: dict[SeriesKey, list[SeriesState]] = defaultdict(list)
        for keys in by_day.values():
            for chunk in _chunks(keys, _KEYS_CHUNK):
                select = (
                    _LATERAL_FROM
                    if connection.dialect.name == "postgresql"
                    else f""", t AS (
                        SELECT k.protocol, k.metric, k.chain, (
                            SELECT max(b.observed_at) FROM series_states b WHERE {_SAME_B}
                            AND b.observed_at < :low
                        ) AS at FROM k)
                    SELECT st.* FROM k JOIN series_states st ON st.protocol = k.protocol
                    AND st.metric = k.metric AND st.chain = k.chain AND st.observed_at >= :low
                    UNION ALL
                    SELECT st.* FROM t JOIN series_states st ON {_SAME_T}
                    AND st.observed_at = t.at"""
                )
                low = min(lows[key] for key in chunk)
                for state in _read_states(connection, _SERIES, chunk, select, low=low):
                    found[state.key].append(state)
        for states in found.values():
            states.sort(key=lambda state: state.observed_at)
        return found

    def _days_and_groups(
        self,
        connection: Connection,
        metrics: Sequence[Mapping[str, Any]],
        listed_before: Mapping[str, Listing | None],
    ) -> _Deltas:
        """Write the batch's new day closes; return what they (and the listings) move in
        the group days."""
        closes = _day_closes(metrics)
        stored = self._stored_closes(connection, list(closes))
        fresh = {
            key: close
            for key, close in closes.items()
            if key not in stored or close[1:] > stored[key][1:]
        }
        listed_now = self.listings(connection, {key[0] for key in fresh} | set(listed_before))
        relisted = {
            slug for slug, before in listed_before.items() if before != listed_now.get(slug)
        }
        # The days whose contributions may move: a close moves its day and the CARRY_DAYS
        # after it; a listing moves every day of the protocol.
        spans: dict[str, tuple[int, int]] = {}
        for protocol, _, _, day in fresh:
            low, high = spans.get(protocol, (day, day))
            spans[protocol] = (min(low, day), max(high, day + CARRY_DAYS))
        for slug in relisted:
            spans[slug] = (-_ALL_DAYS, _ALL_DAYS)
        deltas: _Deltas = defaultdict(lambda: [0.0, 0, 0])
        if not spans:
            return deltas
        old_closes = self._closes_of(connection, spans)
        self._upsert_closes.write(connection, _close_rows(fresh))
        fresh_of: dict[str, dict[_DayKey, _Close]] = defaultdict(dict)
        for key, close in fresh.items():
            fresh_of[key[0]][key] = close
        for slug, (low, high) in spans.items():
            before = old_closes.get(slug, {})
            after = {**before, **fresh_of.get(slug, {})}
            if slug in relisted:
                present = [key[3] for key in (*before, *after)]
                if not present:
                    continue
                low, high = min(present), max(present) + CARRY_DAYS
            days = range(low, high + 1)
            old_listing = listed_before.get(slug) if slug in relisted else listed_now.get(slug)
            old, new = (
                contributions(
                    slug,
                    [
                        BucketValue(slug, metric, chain, day, close[0])
                        for (_, metric, chain, day), close in values.items()
                    ],
                    listing,
                    days,
                )
                for values, listing in ((before, old_listing), (after, listed_now.get(slug)))
            )
            # Every key of either side once (``old`` is this loop's own): the delta of each
            # that moved, ``_add`` inlined (tens of thousands of keys per page).
            for key, now in new.items():
                was = old.pop(key, _NOTHING)
                if was != now:  # most days of the span keep their contribution
                    delta = deltas[key]
                    delta[0] += now[0] - was[0]
                    delta[1] += now[1] - was[1]
                    delta[2] += now[2] - was[2]
            for key, was in old.items():
                delta = deltas[key]
                delta[0] -= was[0]
                delta[1] -= was[1]
                delta[2] -= was[2]
        return deltas

    def _add_to_group_days(self, connection: Connection, deltas: _Deltas) -> None:
        self._add_to_groups.write(connection, _group_rows(deltas))

    @staticmethod
    def _stored_closes(connection: Connection, keys: Sequence[_DayKey]) -> dict[_DayKey, _Close]:
        found = {}
        for chunk in _chunks(keys, _KEYS_CHUNK):
            keyed, parameters = _keys_cte(
                connection.dialect.name, ("protocol", "metric", "chain", "day"), chunk
            )
            same = (
                "d.protocol = k.protocol AND d.metric = k.metric"
                " AND d.chain = k.chain AND d.day = k.day"
            )
            if connection.dialect.name == "postgresql":
                # At most one row (the key is the primary key); LIMIT keeps it per key.
                source = (
                    f"k CROSS JOIN LATERAL (SELECT * FROM series_days d WHERE {same} LIMIT 1) d"
                )
            else:
                source = f"k JOIN series_days d ON {same}"
            statement = text(
                f"""{keyed}
                SELECT d.protocol, d.metric, d.chain, d.day, d.value, d.observed_at, d.position
                FROM {source}"""
            )
            for row in connection.execute(statement, parameters):
                found[(row.protocol, row.metric, row.chain, int(row.day))] = _close(row)
        return found

    @staticmethod
    def _closes_of(
        connection: Connection, spans: Mapping[str, tuple[int, int]]
    ) -> dict[str, dict[_DayKey, _Close]]:
        """Each protocol's stored day closes over its span and the CARRY_DAYS before it."""
        sd = SERIES_DAYS
        found: dict[str, dict[_DayKey, _Close]] = defaultdict(dict)
        slugs = sorted(spans, key=lambda slug: spans[slug])
        for chunk in _chunks(slugs):
            low = min(spans[slug][0] for slug in chunk) - CARRY_DAYS
            high = max(spans[slug][1] for slug in chunk)
            for row in connection.execute(
                select(sd).where(sd.c.protocol.in_(chunk), sd.c.day.between(low, high))
            ):
                found[row.protocol][(row.protocol, row.metric, row.chain, row.day)] = _close(row)
        return found

    # -- reading -------------------------------------------------------------------------------

    def states_at(self, as_of: float | None, protocol: str | None = None) -> list[SeriesState]:
        """The state of every series (or ``protocol``'s) at ``as_of`` (None: now)."""
        st = SERIES_STATES
        statement = select(st)
        if as_of is None:
            statement = statement.where(st.c.valid_to == OPEN)
        elif self._engine.dialect.name == "postgresql":
            statement = statement.where(
                text(
                    "history_float8range(observed_at, valid_to, '[)') @> CAST(:t AS float8)"
                ).bindparams(t=as_of)
            )
        else:
            statement = statement.where(st.c.observed_at <= as_of, st.c.valid_to > as_of)
        if protocol is not None:
            statement = statement.where(st.c.protocol == protocol)
        with self._engine.connect() as connection:
            rows = connection.execute(statement.order_by(st.c.first_position)).all()
        return [SeriesState._make(row) for row in rows]

    def group_days(
        self, dimension: str, days: Sequence[int], metrics: Iterable[str]
    ) -> list[GroupDay]:
        """The rows of ``dimension``'s groups on ``days``, of ``metrics``."""
        gd = GROUP_DAYS
        columns = (gd.c.dimension, gd.c.grp, gd.c.metric, gd.c.day)
        answer: list[GroupDay] = []
        with self._engine.connect() as connection:
            for chunk in _chunks(sorted(set(days)), 500):
                statement = select(*columns, gd.c.total, gd.c.counted, gd.c.members).where(
                    gd.c.dimension == dimension,
                    gd.c.day.in_(chunk),
                    gd.c.metric.in_(sorted(set(metrics))),
                    gd.c.members > 0,
                )
                answer.extend(GroupDay(*row) for row in connection.execute(statement))
        return answer


_COLUMN_TYPES: Final = {
    "protocol": "text",
    "metric": "text",
    "chain": "text",
    "day": "integer",
    "low": "float8",
    "high": "float8",
    "cutoff": "float8",
}


def _keys_cte(
    dialect: str, names: Sequence[str], keys: Sequence[Sequence[Any]]
) -> tuple[str, dict[str, Any]]:
    """``WITH k(names) AS (...)`` over ``keys``, passed as one JSON parameter (a join on it
    probes an index once per key, on PostgreSQL and SQLite alike; a statement text that
    does not grow with the keys is parsed once)."""
    document = json.dumps([dict(zip(names, key, strict=True)) for key in keys])
    if dialect == "postgresql":
        columns = ", ".join(f"{name} {_COLUMN_TYPES[name]}" for name in names)
        source = f"SELECT * FROM json_to_recordset(CAST(:keys AS json)) AS x({columns})"
    else:
        columns = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name in names)
        source = f"SELECT {columns} FROM json_each(:keys)"
    return f"WITH k AS ({source})", {"keys": document}


def _day_closes(
    metrics: Iterable[Mapping[str, Any]],
    recordings: dict[SeriesKey, list[Recording]] | None = None,
) -> dict[_DayKey, _Close]:
    """The last recording of each series' day among ``metrics``: (value, observed_at,
    position); with ``recordings``, each series' recordings collected in it too."""
    closes: dict[_DayKey, _Close] = {}
    for row in metrics:
        observed_at = float(row["observed_at"])
        close = (float(row["value"]), observed_at, int(row["position"]))
        if recordings is not None:
            recordings[(row["protocol"], row["metric"], row["chain"])].append(
                Recording(observed_at, close[0], close[2])
            )
        key = (row["protocol"], row["metric"], row["chain"], math.floor(observed_at / DAY))
        held = closes.get(key)
        if held is None or close[1:] > held[1:]:
            closes[key] = close
    return closes


def _close_rows(
    closes: Mapping[_DayKey, _Close],
) -> list[dict[str, Any]]:
    return [
        {
            "protocol": protocol,
            "metric": metric,
            "chain": chain,
            "day": day,
            "value": value,
            "observed_at": observed_at,
            "position": position,
        }
        for (protocol, metric, chain, day), (value, observed_at, position) in closes.items()
    ]


def _group_rows(deltas: _Deltas) -> list[dict[str, Any]]:
    return [
        {
            "dimension": dimension,
            "grp": group,
            "metric": metric,
            "day": day,
            "total": total,
            "counted": int(counted),
            "members": int(members),
        }
        for (dimension, group, metric, day), (total, counted, members) in deltas.items()
        if total or counted or members
    ]
