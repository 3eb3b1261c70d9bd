"""``HistoryReadModel`` on SQLAlchemy 2 Core: every observation as queryable history.

One code path serves ``sqlite:///path.db`` (the embedded default) and
``postgresql+psycopg://...`` (production). The tables and the Alembic revisions that own
them are in ``sql_schema.py`` (shared with the delivery log); ``migrate(url)`` upgrades a
database to head and the read model's constructor calls it.

Exactly-once: every ``apply`` runs in one transaction that first locks this projection's
row in ``projection_tracking`` (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite), so two workers applying the same batch serialise: the second sees
the new position and skips what the first wrote.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import (
    Double,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from ..application.aggregate import BucketValue, GroupDay
from ..application.alert_rules import RULE_FACT_KINDS, AlertRuleView, fold_rule
from ..application.analytics import RecentCloses
from ..application.chain_tvl import DAY, DailyValue, Listing
from ..application.log import LogBatch, LogEntry, LogGapError
from ..application.ports import CurrentValues, DetailDropped, HistoryRow, ListingRow, Purged
from ..application.series_states import CHANGE_METRICS, OPEN, SeriesState
from ..application.smart_money import WalletMove, moves_of
from ..application.time_travel import (
    CHANGE_SPAN,
    ChangePoint,
    Cut,
    LatestValue,
    ListingDetails,
)
from ..application.views import (
    AnomalyQuery,
    AnomalyView,
    MevQuery,
    MevTotals,
    MevView,
    Series,
    SeriesPoint,
    SeriesQuery,
)
from ..domain.alert_values import stored_condition, stored_target
from ..domain.observations import TOTAL
from .sql_bulk import BulkWriter
from .sql_partitions import PostgresDetailPartitions
from .sql_price_history import SqlPriceHistory
from .sql_rollups import SqlRollups
from .sql_schema import (
    ALERT_EVENTS,
    ALERT_RULES,
    ANOMALIES,
    DETAIL_TABLES,
    GROUP_DAYS,
    HISTORY_RETENTION,
    MEV_DETECTIONS,
    PRICE_OBSERVATIONS,
    PROJECTION_TRACKING,
    PROTOCOL_LISTINGS,
    PROTOCOL_OBSERVATIONS,
    PROTOCOLS,
    SERIES_DAYS,
    SERIES_STATES,
    WALLET_MOVES,
    adapter_engine,
    chunked,
    close_engine,
    scrub,
    write_transaction,
)

__all__ = ["SqlHistoryReadModel"]

DEFAULT_TRACKING_NAME: Final = "history"
_FACT_TABLES: Final = (
    ANOMALIES,
    MEV_DETECTIONS,
    WALLET_MOVES,
    PROTOCOL_OBSERVATIONS,
    PRICE_OBSERVATIONS,
    PROTOCOLS,
    PROTOCOL_LISTINGS,
    ALERT_EVENTS,
    ALERT_RULES,
    SERIES_STATES,
    SERIES_DAYS,
    GROUP_DAYS,
)
# The ``history_retention`` row of the raw detail (migration 0014 writes it at -inf).
_DETAIL: Final = "detail"
# Rows per DELETE when SQLite drops detail (each in its own transaction: the write lock is
# let go between them), and at most this many rounds per run.
_DELETE_CHUNK: Final = 10_000
_DELETE_ROUNDS: Final = 10_000
# How long PostgreSQL's retention waits for a lock (a long read on a partition) before
# giving up until the next run, rather than queueing every reader and writer behind it.
_DROP_LOCK_TIMEOUT: Final = "5s"
_PROTOCOL_KINDS: Final = frozenset({"protocol_listed", "protocol_updated"})
_ALERT_KINDS: Final = {"alert_triggered": "triggered", "alert_resolved": "resolved"}


def _mev_row(entry: LogEntry) -> dict[str, Any]:
    data = entry.data
    usd = data.get("profit_usd")
    return {
        "key": str(data["key"]),
        "position": entry.position,
        "chain_id": int(entry.key),
        "kind": str(data["kind"]),
        "block": int(data["block"]),
        "block_hash": str(data["block_hash"]),
        "pool": str(data["pool"]),
        "actor": str(data["actor"]),
        "victim": None if data.get("victim") is None else str(data["victim"]),
        "quote_token": str(data["quote_token"]),
        "profit": str(data["profit"]),
        "profit_quote": float(data["profit_quote"]),
        "profit_usd": None if usd is None else float(usd),
        "tx_hashes": ",".join(str(tx) for tx in data["tx_hashes"]),
        "recorded_at": entry.recorded_at,
    }


def _move_row(move: WalletMove) -> dict[str, Any]:
    row = move.to_json()
    return {**row, "amount_paid": str(move.amount_paid), "amount_got": str(move.amount_got)}


# --- series helpers ---------------------------------------------------------------------


class _floor(FunctionElement[float]):
    """``floor(x)`` on every backend (SQLite may be built without its math functions)."""

    type = Double()
    name = "floor"
    inherit_cache = True


@compiles(_floor)
def _compile_floor(element: _floor, compiler: SQLCompiler, **kw: Any) -> str:
    return f"floor({compiler.process(element.clauses, **kw)})"


@compiles(_floor, "sqlite")
def _compile_floor_sqlite(element: _floor, compiler: SQLCompiler, **kw: Any) -> str:
    # CAST truncates towards zero in SQLite; subtract one where that rounded up (x < 0).
    # (On PostgreSQL CAST rounds to nearest, hence the separate compilations.)
    x = compiler.process(element.clauses, **kw)
    return f"(CAST({x} AS INTEGER) - ({x} < CAST({x} AS INTEGER)))"


def _series_walk(protocol: str | None) -> str:
    """``WITH RECURSIVE series``: every (protocol, metric, chain), one index probe each (a
    loose index scan over ``ix_protocol_observations_series``); of ``protocol`` only."""
    same = "" if protocol is None else "AND o.protocol = :protocol"
    return f"""
        WITH RECURSIVE series AS (
            (SELECT o.protocol, o.metric, o.chain FROM protocol_observations o
             WHERE TRUE {same} ORDER BY o.protocol, o.metric, o.chain LIMIT 1)
            UNION ALL
            SELECT n.protocol, n.metric, n.chain FROM series s CROSS JOIN LATERAL (
                SELECT o.protocol, o.metric, o.chain FROM protocol_observations o
                WHERE (o.protocol, o.metric, o.chain) > (s.protocol, s.metric, s.chain)
                {same}
                ORDER BY o.protocol, o.metric, o.chain LIMIT 1) n
        )"""


def _latest_value(row: Any) -> LatestValue:
    return LatestValue(
        row.protocol,
        row.metric,
        row.chain,
        float(row.value),
        float(row.observed_at),
        int(row.position),
        int(row.first_position),
    )


def _cut_parameters(cut: Cut, protocol: str | None) -> dict[str, Any]:
    """The bind parameters of the probe queries: no bound is an infinite one."""
    return {
        "as_of": math.inf if cut.as_of is None else cut.as_of,
        "known_at": 2**62 if cut.known_at is None else cut.known_at,
        "protocol": protocol,
        "total": TOTAL,
    }


def _inside(cut: Cut, protocol: str | None = None) -> list[ColumnElement[bool]]:
    """The conditions that keep an observation inside ``cut`` (and of ``protocol``)."""
    obs = PROTOCOL_OBSERVATIONS
    conditions: list[ColumnElement[bool]] = []
    if protocol is not None:
        conditions.append(obs.c.protocol == protocol)
    if cut.as_of is not None:
        conditions.append(obs.c.observed_at <= cut.as_of)
    if cut.known_at is not None:
        conditions.append(obs.c.position <= cut.known_at)
    return conditions


def _recent_closes(
    rows: Iterable[tuple[str, int, float]], days: int, first_days: dict[str, int] | None
) -> dict[str, RecentCloses]:
    """Rows ``(protocol, day, value)`` as each protocol's closes, oldest first, cut to the
    ``days`` days up to its latest (its first day: ``first_days``', else its first row's)."""
    by_protocol: dict[str, list[tuple[int, float]]] = {}
    for protocol, day, value in rows:
        by_protocol.setdefault(protocol, []).append((day, value))
    found = {}
    for protocol, closes in by_protocol.items():
        closes.sort()
        first = closes[0][0] if first_days is None else first_days.get(protocol, closes[0][0])
        last = closes[-1][0]
        found[protocol] = RecentCloses(
            first_observed_at=float(first * DAY),
            closes=tuple(
                SeriesPoint(float(day * DAY), value) for day, value in closes if day >= last - days
            ),
        )
    return found


def _horizon(connection: Connection, *, lock: bool) -> float | None:
    """The retention horizon (None: nothing dropped). ``lock``: share-lock its row, so a
    writer and a retention run take turns (FOR SHARE on PostgreSQL; SQLite's writers
    already hold the database's write lock)."""
    statement = select(HISTORY_RETENTION.c.horizon).where(HISTORY_RETENTION.c.name == _DETAIL)
    if lock:
        statement = statement.with_for_update(read=True)
    found = connection.execute(statement).scalar_one_or_none()
    return None if found is None or found == -math.inf else float(found)


# --- the read model ---------------------------------------------------------------------


class SqlHistoryReadModel:
    """Every metric, price, listing and alert fact of the log, in SQL tables.

    Implements the ``HistoryReadModel`` port. Synchronous: call it from a worker thread.
    The constructor creates the engine and migrates the schema; ``close()`` disposes of the
    engine. Several instances (processes) may share one database: ``apply`` is exactly
    once per tracking ``name``.
    """

    def __init__(self, target: str | Engine, *, name: str = DEFAULT_TRACKING_NAME) -> None:
        self._name = name
        # A URL: its own engine, migrated; the process's shared (migrated) engine otherwise.
        self._engine, self._owns_engine = adapter_engine(target)
        self._rollups = SqlRollups(self._engine)
        self._detail_writers = [BulkWriter(self._engine.dialect.name, t) for t in DETAIL_TABLES]
        self._partitions = (
            PostgresDetailPartitions() if self._engine.dialect.name == "postgresql" else None
        )
        self._listing_details: tuple[tuple[Any, ...], dict[str, ListingDetails]] | None = None
        # The last recent_tvl_closes answer, under (position, cut, days): the risk list
        # reads every protocol's closes, which change only when the position moves.
        self._recent_closes: tuple[tuple[Any, ...], dict[str, RecentCloses]] | None = None
        try:
            self._ensure_tracking_row()
            self._fill_rollups()
        except BaseException:
            if self._owns_engine:
                self._engine.dispose()
            raise

    # -- writing -------------------------------------------------------------------------

    def position(self) -> int:
        """The last log position applied (0 before the first batch)."""
        with self._engine.connect() as connection:
            stored = connection.execute(
                select(PROJECTION_TRACKING.c.position).where(
                    PROJECTION_TRACKING.c.name == self._name
                )
            ).scalar_one_or_none()
        return 0 if stored is None else int(stored)

    def apply(self, batch: LogBatch) -> bool:
        """Apply ``batch`` in one transaction with the tracking row (exactly once).

        Entries at or below the current position are skipped; a batch with nothing new
        returns False. A batch starting beyond the position raises ``LogGapError`` and
        writes nothing.
        """
        with write_transaction(self._engine) as connection:
            if self._engine.dialect.name == "postgresql":
                # The commit does not wait for its WAL flush (ADR 0056): the tracking row is
                # in this transaction, so a crash loses a tail of batches and their position
                # together, and the projection re-applies that tail from the log.
                connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            position = self._lock_position(connection)
            if batch.after > position:
                # Raising inside the transaction rolls it back: nothing is written.
                raise LogGapError(position, batch.after)
            if batch.last <= position:
                return False
            fresh = [entry for entry in batch.entries if entry.position > position]
            self._insert(connection, fresh)
            connection.execute(
                update(PROJECTION_TRACKING)
                .where(PROJECTION_TRACKING.c.name == self._name)
                .values(position=batch.last)
            )
            return True

    def reset(self) -> None:
        """Delete every row, tracking included (before a rebuild from position 0)."""
        self._listing_details = None
        self._recent_closes = None
        with write_transaction(self._engine) as connection:
            # Lock first so a concurrent apply cannot interleave with the deletes.
            self._lock_position(connection)
            for table in _FACT_TABLES:
                connection.execute(delete(table))
            connection.execute(delete(PROJECTION_TRACKING))
            # Recreate our row at 0 so later applies still have a row to lock.
            connection.execute(insert(PROJECTION_TRACKING).values(name=self._name, position=0))

    def purge(self, owner: str, rule_ids: Sequence[str]) -> Purged:
        """Delete ``owner``'s rules and alert transitions (an erased account's): a rule's
        name and channels are personal. The table is scrubbed so that no copy stays in the
        files (``scrub``). Implements ``PersonalRecords``."""
        with write_transaction(self._engine) as connection:
            deleted = connection.execute(
                delete(ALERT_RULES).where(ALERT_RULES.c.owner == owner)
            ).rowcount
            deleted += connection.execute(
                delete(ALERT_EVENTS).where(ALERT_EVENTS.c.owner == owner)
            ).rowcount
        return Purged(rows=int(deleted), scrubbed=scrub(self._engine, [ALERT_RULES]))

    def close(self) -> None:
        """Release the connection pool (if it is this read model's own)."""
        if self._owns_engine:
            close_engine(self._engine)

    # -- retention (ADR 0047) --------------------------------------------------------------

    def detail_since(self) -> float | None:
        """The time before which raw observations were dropped (None: all are held).
        Implements ``DetailStore``."""
        with self._engine.connect() as connection:
            return _horizon(connection, lock=False)

    def drop_detail_before(self, cutoff: float) -> DetailDropped:
        """Drop the raw observations older than ``cutoff``: PostgreSQL's whole weeks that
        end by then (a week holding the cutoff waits for the next run), SQLite's rows in
        bounded DELETEs. The horizon moves first, in its own transaction: from then on the
        projection does not write older rows and reads before it are refused. Rollups and
        the event log stay. Implements ``DetailStore``."""
        with write_transaction(self._engine) as connection:
            horizon = max(cutoff, _horizon(connection, lock=True) or -math.inf)
            connection.execute(
                update(HISTORY_RETENTION)
                .where(HISTORY_RETENTION.c.name == _DETAIL)
                .values(horizon=horizon, applied_at=time.time())
            )
        if self._partitions is not None:
            with write_transaction(self._engine) as connection:
                connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{_DROP_LOCK_TIMEOUT}'")
                dropped = [
                    self._partitions.drop_before(connection, table.name, horizon)
                    for table in DETAIL_TABLES
                ]
            return DetailDropped(horizon, sum(map(len, dropped)), 0)
        rows = 0
        for table in DETAIL_TABLES:
            for _ in range(_DELETE_ROUNDS):
                old: Select[Any] = select(literal_column("rowid")).where(
                    table.c.observed_at < horizon
                )
                with write_transaction(self._engine) as connection:
                    deleted = connection.execute(
                        delete(table).where(
                            literal_column("rowid").in_(old.limit(_DELETE_CHUNK).scalar_subquery())
                        )
                    ).rowcount
                rows += deleted
                if deleted < _DELETE_CHUNK:
                    break
        return DetailDropped(horizon, 0, rows)

    # -- reconciliation (ADR 0035) -------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[_SqlHistorySnapshot]:
        """One consistent read of every table (REPEATABLE READ on PostgreSQL; SQLite's
        read transaction, a snapshot in WAL mode), while the projection goes on writing."""
        with self._engine.connect() as connection:
            if self._engine.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                position = connection.execute(
                    select(PROJECTION_TRACKING.c.position).where(
                        PROJECTION_TRACKING.c.name == self._name
                    )
                ).scalar_one_or_none()
                yield _SqlHistorySnapshot(
                    connection,
                    0 if position is None else int(position),
                    _horizon(connection, lock=False),
                )

    def restore(
        self,
        position: int,
        protocols: Sequence[str],
        tokens: Sequence[str],
        entries: Sequence[LogEntry],
    ) -> bool:
        """Replace the rows of ``protocols`` and ``tokens`` with ``entries``' (all of
        theirs up to ``position``) and rebuild the rollups, under the tracking lock; False
        when the model is no longer at ``position``. The rollups are rebuilt whole: the
        group-days sums mix every protocol, so a drifted row's share cannot be taken out
        alone."""
        self._listing_details = None
        with write_transaction(self._engine) as connection:
            if self._lock_position(connection) != position:
                return False
            obs, prices = PROTOCOL_OBSERVATIONS, PRICE_OBSERVATIONS
            for chunk in chunked(list(protocols)):
                connection.execute(delete(obs).where(obs.c.protocol.in_(chunk)))
                connection.execute(delete(PROTOCOLS).where(PROTOCOLS.c.slug.in_(chunk)))
                connection.execute(
                    delete(PROTOCOL_LISTINGS).where(PROTOCOL_LISTINGS.c.slug.in_(chunk))
                )
            for chunk in chunked(list(tokens)):
                connection.execute(delete(prices).where(prices.c.token.in_(chunk)))
            metrics, price_rows = _observation_rows(entries)
            self._insert_detail(connection, metrics, price_rows)
            listings = [entry for entry in entries if entry.kind in _PROTOCOL_KINDS]
            if listings:
                self._upsert_protocols(connection, listings)
            self._rollups.rebuild(connection)
            return True

    # -- reading -------------------------------------------------------------------------

    @property
    def prices(self) -> SqlPriceHistory:
        """The price reads of DeFiLlama's coins API, over this model's engine."""
        return SqlPriceHistory(self._engine)

    def anomalies(self, query: AnomalyQuery) -> list[AnomalyView]:
        """Recorded anomalies matching ``query``, the most recent first."""
        table = ANOMALIES
        conditions: list[ColumnElement[bool]] = []
        if query.protocol is not None:
            conditions.append(table.c.subject == query.protocol)
            conditions.append(table.c.series.startswith("protocol:"))
        if query.token is not None:
            conditions.append(table.c.subject == query.token)
            conditions.append(table.c.series.startswith("token:"))
        if query.measure is not None:
            conditions.append(table.c.measure == query.measure)
        if query.start is not None:
            conditions.append(table.c.observed_at >= query.start)
        if query.end is not None:
            conditions.append(table.c.observed_at <= query.end)
        if query.min_score is not None:
            conditions.append(table.c.score >= query.min_score)
        statement = (
            select(table)
            .where(*conditions)
            .order_by(table.c.observed_at.desc(), table.c.position.desc())
            .limit(query.limit)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        return [
            AnomalyView(
                position=int(row["position"]),
                subject=str(row["subject"]),
                series=str(row["series"]),
                measure=str(row["measure"]),
                observed_at=float(row["observed_at"]),
                value=float(row["value"]),
                score=float(row["score"]),
                direction=str(row["direction"]),
                reason=str(row["reason"]),
            )
            for row in rows
        ]

    def wallet_moves(self, chain_id: int) -> list[WalletMove]:
        """Every live wallet move of ``chain_id``, in chain order."""
        table = WALLET_MOVES
        query = (
            select(table)
            .where(table.c.chain_id == chain_id)
            .order_by(table.c.block, table.c.tx_index, table.c.log_index, table.c.wallet)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            WalletMove(
                chain_id=int(row["chain_id"]),
                block=int(row["block"]),
                block_hash=str(row["block_hash"]),
                timestamp=float(row["timestamp"]),
                tx_hash=str(row["tx_hash"]),
                tx_index=int(row["tx_index"]),
                log_index=int(row["log_index"]),
                wallet=str(row["wallet"]),
                kind="swap" if row["kind"] == "swap" else "transfer",
                pool=None if row["pool"] is None else str(row["pool"]),
                counterparty=None if row["counterparty"] is None else str(row["counterparty"]),
                token_paid=None if row["token_paid"] is None else str(row["token_paid"]),
                amount_paid=int(row["amount_paid"]),
                token_got=None if row["token_got"] is None else str(row["token_got"]),
                amount_got=int(row["amount_got"]),
            )
            for row in rows
        ]

    def mev(self, query: MevQuery) -> tuple[list[MevView], MevTotals]:
        """Live MEV detections matching ``query`` (the most recent block first, at most
        ``limit``) and the totals of every match."""
        table = MEV_DETECTIONS
        conditions: list[ColumnElement[bool]] = []
        if query.pool is not None:
            conditions.append(table.c.pool == query.pool)
        if query.actor is not None:
            conditions.append(table.c.actor == query.actor)
        if query.kind is not None:
            conditions.append(table.c.kind == query.kind)
        if query.from_block is not None:
            conditions.append(table.c.block >= query.from_block)
        if query.to_block is not None:
            conditions.append(table.c.block <= query.to_block)
        page = (
            select(table)
            .where(*conditions)
            .order_by(table.c.block.desc(), table.c.position.desc(), table.c.key)
            .limit(query.limit)
        )
        totals = (
            select(table.c.kind, func.count(), func.coalesce(func.sum(table.c.profit_usd), 0.0))
            .where(*conditions)
            .group_by(table.c.kind)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(page).mappings().all()
            by_kind = {
                str(kind): (int(count), float(usd))
                for kind, count, usd in connection.execute(totals).all()
            }
        views = [
            MevView(
                key=str(row["key"]),
                position=int(row["position"]),
                chain_id=int(row["chain_id"]),
                kind=str(row["kind"]),
                block=int(row["block"]),
                block_hash=str(row["block_hash"]),
                pool=str(row["pool"]),
                actor=str(row["actor"]),
                victim=None if row["victim"] is None else str(row["victim"]),
                quote_token=str(row["quote_token"]),
                profit=str(row["profit"]),
                profit_quote=float(row["profit_quote"]),
                profit_usd=None if row["profit_usd"] is None else float(row["profit_usd"]),
                tx_hashes=tuple(str(row["tx_hashes"]).split(",")),
                recorded_at=float(row["recorded_at"]),
            )
            for row in rows
        ]
        sandwiches = by_kind.get("sandwich", (0, 0.0))
        arbitrages = by_kind.get("arbitrage", (0, 0.0))
        return views, MevTotals(
            detections=sandwiches[0] + arbitrages[0],
            sandwiches=sandwiches[0],
            arbitrages=arbitrages[0],
            profit_usd=sandwiches[1] + arbitrages[1],
        )

    def series(self, query: SeriesQuery) -> Series:
        """Time-ordered points of one (protocol, metric, chain).

        ``start``/``end``/``as_of`` bound ``observed_at`` (inclusive). Observations sharing
        one ``observed_at`` count once: the highest position (the latest correction) wins.
        With ``bucket`` (seconds) each bucket reports its last observation (by
        ``observed_at``, then position) stamped with the bucket's start. ``limit`` keeps
        the most recent points.
        """
        if query.bucket is not None and query.bucket <= 0:
            raise ValueError(f"bucket must be a positive number of seconds, got {query.bucket}")
        if query.limit < 0:
            raise ValueError(f"limit must not be negative, got {query.limit}")
        empty = Series(slug=query.slug, metric=query.metric, chain=query.chain)
        if query.limit == 0:
            return empty
        obs = PROTOCOL_OBSERVATIONS
        conditions: list[ColumnElement[bool]] = [
            obs.c.protocol == query.slug,
            obs.c.metric == query.metric,
            obs.c.chain == query.chain,
        ]
        if query.start is not None:
            conditions.append(obs.c.observed_at >= query.start)
        if query.end is not None:
            conditions.append(obs.c.observed_at <= query.end)
        if query.as_of is not None:
            conditions.append(obs.c.observed_at <= query.as_of)
        if query.until_position is not None:
            conditions.append(obs.c.position <= query.until_position)
        # The group key: the timestamp itself (raw points; this folds corrections of one
        # timestamp together) or the bucket's index. The bucket start is computed back in
        # Python from the integer index, so it is exact whatever the backend's arithmetic.
        key: ColumnElement[float] = (
            obs.c.observed_at
            if query.bucket is None
            else _floor(obs.c.observed_at / literal(float(query.bucket), Double()))
        )
        # Window function (SQLite >= 3.25, PostgreSQL): the last row of each group, by
        # observed_at then position, is its representative.
        ranked = (
            select(
                key.label("key"),
                obs.c.value,
                func.row_number()
                .over(partition_by=key, order_by=(obs.c.observed_at.desc(), obs.c.position.desc()))
                .label("rank"),
            )
            .where(*conditions)
            .subquery()
        )
        # Newest first so LIMIT keeps the most recent points; reversed below.
        statement = (
            select(ranked.c.key, ranked.c.value)
            .where(ranked.c.rank == 1)
            .order_by(ranked.c.key.desc())
            .limit(query.limit)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        points = [
            SeriesPoint(
                timestamp=(
                    float(row.key)
                    if query.bucket is None
                    else float(math.floor(row.key) * query.bucket)
                ),
                value=float(row.value),
            )
            for row in reversed(rows)
        ]
        return Series(slug=query.slug, metric=query.metric, chain=query.chain, points=points)

    def daily_values(self, chain: str | None = None) -> list[DailyValue]:
        """Each protocol's last TVL of each UTC day, on the ``total`` series and, with
        ``chain``, on that chain's series (what ``daily_chain_tvl`` sums)."""
        obs = PROTOCOL_OBSERVATIONS
        chains = [TOTAL] if chain is None else [TOTAL, chain]
        day = _floor(obs.c.observed_at / literal(float(DAY), Double()))
        ranked = (
            select(
                obs.c.protocol,
                obs.c.chain,
                day.label("day"),
                obs.c.value,
                func.row_number()
                .over(
                    partition_by=(obs.c.protocol, obs.c.chain, day),
                    order_by=(obs.c.observed_at.desc(), obs.c.position.desc()),
                )
                .label("rank"),
            )
            .where(obs.c.metric == "tvl", obs.c.chain.in_(chains))
            .subquery()
        )
        statement = select(ranked.c.protocol, ranked.c.chain, ranked.c.day, ranked.c.value).where(
            ranked.c.rank == 1
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [DailyValue(row.protocol, row.chain, int(row.day), float(row.value)) for row in rows]

    def latest_values(self, cut: Cut, protocol: str | None = None) -> list[LatestValue]:
        """Each series' latest observation inside ``cut`` (the latest recording of a time
        wins), with the position of its first observation inside it; every protocol's, or
        ``protocol``'s."""
        if self._engine.dialect.name == "postgresql":
            return self._latest_values_by_probes(cut, protocol)
        obs = PROTOCOL_OBSERVATIONS
        series = (obs.c.protocol, obs.c.metric, obs.c.chain)
        ranked = (
            select(
                *series,
                obs.c.value,
                obs.c.observed_at,
                obs.c.position,
                func.min(obs.c.position).over(partition_by=series).label("first_position"),
                func.row_number()
                .over(
                    partition_by=series,
                    order_by=(obs.c.observed_at.desc(), obs.c.position.desc()),
                )
                .label("rank"),
            )
            .where(*_inside(cut, protocol))
            .subquery()
        )
        statement = select(ranked).where(ranked.c.rank == 1)
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [_latest_value(row) for row in rows]

    def change_points(self, cut: Cut, protocol: str | None = None) -> list[ChangePoint]:
        """The points inside ``cut`` of every protocol's (or ``protocol``'s) series with
        changes (``CHANGE_METRICS``' totals) within ``CHANGE_SPAN`` of the series' newest
        one, time-ordered, one per time (the latest recording)."""
        if self._engine.dialect.name == "postgresql":
            return self._change_points_by_probes(cut, protocol)
        obs = PROTOCOL_OBSERVATIONS
        totals = (
            obs.c.metric.in_(CHANGE_METRICS),
            obs.c.chain == TOTAL,
            *_inside(cut, protocol),
        )
        newest = (
            select(obs.c.protocol, obs.c.metric, func.max(obs.c.observed_at).label("newest"))
            .where(*totals)
            .group_by(obs.c.protocol, obs.c.metric)
            .subquery()
        )
        ranked = (
            select(
                obs.c.protocol,
                obs.c.metric,
                obs.c.observed_at,
                obs.c.value,
                func.row_number()
                .over(
                    partition_by=(obs.c.protocol, obs.c.metric, obs.c.observed_at),
                    order_by=obs.c.position.desc(),
                )
                .label("rank"),
            )
            .join(
                newest,
                (newest.c.protocol == obs.c.protocol) & (newest.c.metric == obs.c.metric),
            )
            .where(*totals, obs.c.observed_at >= newest.c.newest - CHANGE_SPAN)
            .subquery()
        )
        statement = (
            select(ranked.c.protocol, ranked.c.metric, ranked.c.observed_at, ranked.c.value)
            .where(ranked.c.rank == 1)
            .order_by(ranked.c.protocol, ranked.c.metric, ranked.c.observed_at)
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            ChangePoint(row.protocol, row.metric, float(row.observed_at), float(row.value))
            for row in rows
        ]

    # PostgreSQL has no skip scan: a window over every observation inside the cut grows with
    # the table. These walk the series index instead: one probe per series for the next
    # series (a recursive "loose index scan") and one for its latest point, so the work grows
    # with the number of series. Same answers as the window queries (the property test runs
    # both backends).

    def _latest_values_by_probes(self, cut: Cut, protocol: str | None) -> list[LatestValue]:
        statement = text(
            _series_walk(protocol)
            + """
            SELECT s.protocol, s.metric, s.chain, l.value, l.observed_at, l.position,
                CASE WHEN s.chain = :total THEN l.position ELSE (
                    SELECT min(o.position) FROM protocol_observations o
                    WHERE o.protocol = s.protocol AND o.metric = s.metric
                    AND o.chain = s.chain AND o.observed_at <= :as_of
                    AND o.position <= :known_at) END AS first_position
            FROM series s CROSS JOIN LATERAL (
                SELECT o.value, o.observed_at, o.position FROM protocol_observations o
                WHERE o.protocol = s.protocol AND o.metric = s.metric AND o.chain = s.chain
                AND o.observed_at <= :as_of AND o.position <= :known_at
                ORDER BY o.observed_at DESC, o.position DESC LIMIT 1) l
            """
        )
        with self._engine.connect() as connection:
            rows = connection.execute(statement, _cut_parameters(cut, protocol)).all()
        return [_latest_value(row) for row in rows]

    def _change_points_by_probes(self, cut: Cut, protocol: str | None) -> list[ChangePoint]:
        statement = text(
            _series_walk(protocol)
            + """
            SELECT s.protocol, s.metric, pts.observed_at, pts.value
            FROM series s CROSS JOIN LATERAL (
                SELECT o.observed_at AS newest FROM protocol_observations o
                WHERE o.protocol = s.protocol AND o.metric = s.metric AND o.chain = s.chain
                AND o.observed_at <= :as_of AND o.position <= :known_at
                ORDER BY o.observed_at DESC LIMIT 1) n
            CROSS JOIN LATERAL (
                SELECT o.observed_at, o.value, o.position FROM protocol_observations o
                WHERE o.protocol = s.protocol AND o.metric = s.metric AND o.chain = s.chain
                AND o.observed_at <= :as_of AND o.position <= :known_at
                AND o.observed_at >= n.newest - :span) pts
            WHERE s.metric IN :metrics AND s.chain = :total
            ORDER BY s.protocol, s.metric, pts.observed_at, pts.position
            """
        ).bindparams(bindparam("metrics", expanding=True))
        parameters = {
            **_cut_parameters(cut, protocol),
            "span": CHANGE_SPAN,
            "metrics": list(CHANGE_METRICS),
        }
        with self._engine.connect() as connection:
            rows = connection.execute(statement, parameters).all()
        # Ordered by position within a time: the last row of a time is its latest recording.
        latest: dict[tuple[str, str, float], float] = {}
        for row in rows:
            latest[(row.protocol, row.metric, float(row.observed_at))] = float(row.value)
        return [
            ChangePoint(slug, metric, at, value) for (slug, metric, at), value in latest.items()
        ]

    def series_states(self, as_of: float | None, protocol: str | None = None) -> list[SeriesState]:
        """The state of every series (or ``protocol``'s) at ``as_of`` (None: now), from the
        rollup."""
        return self._rollups.states_at(as_of, protocol)

    def group_days(
        self, dimension: str, days: Sequence[int], metrics: Iterable[str]
    ) -> list[GroupDay]:
        """The group-days rollup's rows of ``dimension`` on ``days``, of ``metrics``."""
        return self._rollups.group_days(dimension, days, metrics)

    def listing_details(self, cut: Cut | None = None) -> dict[str, ListingDetails]:
        """Every listed protocol's details, by slug: as they stood in ``cut`` (each one's
        last listing recorded by ``known_at`` and true by ``as_of``; one without a time
        counts as always true), or today's (read again only when a listing was written
        since: a cut of every protocol needs them all)."""
        if cut is not None and (cut.as_of is not None or cut.known_at is not None):
            return self._listing_details_in(cut)
        version_query = select(func.count(), func.max(PROTOCOLS.c.position))
        with self._engine.connect() as connection:
            version = tuple(connection.execute(version_query).one())
            cached = self._listing_details
            if cached is not None and cached[0] == version:
                return cached[1]
            rows = connection.execute(select(PROTOCOLS)).all()
        details = _listing_details(rows)
        self._listing_details = (version, details)
        return details

    def _listing_details_in(self, cut: Cut) -> dict[str, ListingDetails]:
        listings = PROTOCOL_LISTINGS
        inside = []
        if cut.known_at is not None:
            inside.append(listings.c.position <= cut.known_at)
        if cut.as_of is not None:
            inside.append(listings.c.observed_at.is_(None) | (listings.c.observed_at <= cut.as_of))
        ranked = (
            select(
                listings,
                func.row_number()
                .over(partition_by=listings.c.slug, order_by=listings.c.position.desc())
                .label("rank"),
            )
            .where(*inside)
            .subquery()
        )
        with self._engine.connect() as connection:
            rows = connection.execute(select(ranked).where(ranked.c.rank == 1)).all()
        return _listing_details(rows)

    def position_recorded_by(self, time: float) -> int:
        """The last log position of an observation recorded at or before ``time`` (0: none)."""
        obs = PROTOCOL_OBSERVATIONS
        with self._engine.connect() as connection:
            found = connection.execute(
                select(func.max(obs.c.position)).where(obs.c.recorded_at <= time)
            ).scalar_one_or_none()
        return 0 if found is None else int(found)

    def daily_metric_values(
        self,
        metrics: Sequence[str],
        first_day: int | None,
        last_day: int | None,
        cut: Cut,
        protocol: str | None = None,
    ) -> list[BucketValue]:
        """Each series' last value of each UTC day from ``first_day`` to ``last_day`` (days
        since the epoch; None: unbounded), of ``metrics``, on every chain and in total,
        inside ``cut``; every protocol's or ``protocol``'s."""
        obs = PROTOCOL_OBSERVATIONS
        bounds = [*_inside(cut, protocol)]
        if first_day is not None:
            bounds.append(obs.c.observed_at >= first_day * DAY)
        if last_day is not None:
            bounds.append(obs.c.observed_at < (last_day + 1) * DAY)
        day = _floor(obs.c.observed_at / literal(float(DAY), Double()))
        series = (obs.c.protocol, obs.c.metric, obs.c.chain)
        ranked = (
            select(
                *series,
                day.label("day"),
                obs.c.value,
                func.row_number()
                .over(
                    partition_by=(*series, day),
                    order_by=(obs.c.observed_at.desc(), obs.c.position.desc()),
                )
                .label("rank"),
            )
            .where(obs.c.metric.in_(list(metrics)), *bounds)
            .subquery()
        )
        statement = select(ranked).where(ranked.c.rank == 1)
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            BucketValue(row.protocol, row.metric, row.chain, int(row.day), float(row.value))
            for row in rows
        ]

    def recent_tvl_closes(self, cut: Cut, days: int) -> dict[str, RecentCloses]:
        """Each protocol's total TVL closes (its last value of each UTC day, stamped with the
        day's start) over the ``days`` days up to its own latest close, and the start of its
        first day, inside ``cut`` (what the risk list reads: ``application.analytics``).

        Without ``knownAt`` from the day closes (ADR 0021), one pass over the index; the
        day of ``asOf`` itself from the raw observations up to it. With ``knownAt``, which
        must not see later corrections, every day from the raw observations. The answer is
        kept until the position moves (read before the closes: a batch applied meanwhile
        only makes the kept answer newer than its key)."""
        key = (self.position(), cut, days)
        cached = self._recent_closes
        if cached is not None and cached[0] == key:
            return cached[1]
        found = self._read_recent_closes(cut, days)
        self._recent_closes = (key, found)
        return found

    def _read_recent_closes(self, cut: Cut, days: int) -> dict[str, RecentCloses]:
        if cut.known_at is not None:
            values = self.daily_metric_values(["tvl"], None, None, cut)
            return _recent_closes(
                ((v.protocol, v.day, v.value) for v in values if v.chain == TOTAL), days, None
            )
        as_of_day = None if cut.as_of is None else math.floor(cut.as_of / DAY)
        days_ = SERIES_DAYS
        mine = [days_.c.metric == "tvl", days_.c.chain == TOTAL]
        if as_of_day is not None:
            mine.append(days_.c.day < as_of_day)
        bounds = (
            select(
                days_.c.protocol,
                func.max(days_.c.day).label("last_day"),
                func.min(days_.c.day).label("first_day"),
            )
            .where(*mine)
            .group_by(days_.c.protocol)
            .subquery()
        )
        statement = (
            select(days_.c.protocol, days_.c.day, days_.c.value, bounds.c.first_day)
            .join(bounds, bounds.c.protocol == days_.c.protocol)
            .where(*mine, days_.c.day >= bounds.c.last_day - days)
        )
        with self._engine.connect() as connection:
            # Unpacked, not read by name: attribute access on ~50,000 rows cost more than
            # the query.
            rows = connection.execute(statement).all()
        found: list[tuple[str, int, float]] = [(p, d, v) for p, d, v, _ in rows]
        first_days = {protocol: first for protocol, _, _, first in rows}
        if as_of_day is not None:
            # The day of asOf, up to asOf: its close is the last value observed by then.
            for value in self.daily_metric_values(["tvl"], as_of_day, as_of_day, cut):
                if value.chain == TOTAL:
                    found.append((value.protocol, value.day, value.value))
                    first_days.setdefault(value.protocol, value.day)
        return _recent_closes(found, days, first_days)

    def listings(self) -> dict[str, Listing]:
        """Every listed protocol's category and chains, by slug."""
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(PROTOCOLS.c.slug, PROTOCOLS.c.category, PROTOCOLS.c.chains)
            ).all()
        return {row.slug: Listing(row.slug, row.category, tuple(row.chains)) for row in rows}

    def alert_rules(
        self, owner: str | None = None, *, include_deleted: bool = False
    ) -> list[AlertRuleView]:
        """Rules of ``owner`` (every owner's when None), oldest first; deleted ones only
        when asked."""
        statement = select(ALERT_RULES).order_by(ALERT_RULES.c.created_position)
        if owner is not None:
            statement = statement.where(ALERT_RULES.c.owner == owner)
        if not include_deleted:
            statement = statement.where(ALERT_RULES.c.state != "deleted")
        with self._engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [_rule_view(row._mapping) for row in rows]

    def protocol_exists(self, slug: str) -> bool:
        """Whether a ``protocol_listed`` entry for ``slug`` has been applied."""
        with self._engine.connect() as connection:
            found = connection.execute(
                select(PROTOCOLS.c.slug).where(PROTOCOLS.c.slug == slug).limit(1)
            ).first()
        return found is not None

    # -- internals -----------------------------------------------------------------------

    def _ensure_tracking_row(self) -> None:
        # Done once up front so that ``apply`` always finds a row to lock: FOR UPDATE on a
        # missing row locks nothing, and two first applies would both go ahead.
        try:
            with write_transaction(self._engine) as connection:
                exists = connection.execute(
                    select(PROJECTION_TRACKING.c.name).where(
                        PROJECTION_TRACKING.c.name == self._name
                    )
                ).first()
                if exists is None:
                    connection.execute(
                        insert(PROJECTION_TRACKING).values(name=self._name, position=0)
                    )
        except IntegrityError:
            pass  # another process inserted it between our SELECT and INSERT: fine.

    def _fill_rollups(self) -> None:
        """Fill the rollups from the raw rows once, after the upgrade that added them."""
        with self._engine.connect() as connection:
            empty = connection.execute(select(SERIES_STATES.c.protocol).limit(1)).first() is None
        if not empty:
            return
        with write_transaction(self._engine) as connection:
            self._lock_position(connection)  # one filler at a time; the others find it done
            if connection.execute(select(SERIES_STATES.c.protocol).limit(1)).first() is None:
                observed = select(PROTOCOL_OBSERVATIONS.c.position).limit(1)
                if connection.execute(observed).first() is not None:
                    self._rollups.rebuild(connection)

    def _insert_detail(
        self,
        connection: Connection,
        metrics: Sequence[dict[str, Any]],
        prices: Sequence[dict[str, Any]],
    ) -> None:
        """Insert the raw rows observed from the retention horizon on (older ones are not
        held: the rollups still get them), after making their weeks' partitions."""
        horizon = _horizon(connection, lock=True)
        writers = zip(DETAIL_TABLES, self._detail_writers, (metrics, prices), strict=True)
        for table, writer, rows in writers:
            if horizon is not None:
                rows = [row for row in rows if row["observed_at"] >= horizon]
            if not rows:
                continue
            if self._partitions is not None:
                self._partitions.ensure(connection, table.name, (r["observed_at"] for r in rows))
            # One statement per table (sql_bulk), not one per row.
            writer.write(connection, rows)

    def _lock_position(self, connection: Connection) -> int:
        """Read (and on PostgreSQL row-lock) this projection's position, inside a writer.

        ``with_for_update`` renders ``FOR UPDATE`` on PostgreSQL and nothing on SQLite,
        where ``BEGIN IMMEDIATE`` already holds the database's single write lock.
        """
        stored = connection.execute(
            select(PROJECTION_TRACKING.c.position)
            .where(PROJECTION_TRACKING.c.name == self._name)
            .with_for_update()
        ).scalar_one_or_none()
        if stored is not None:
            return int(stored)
        # No row: ``reset`` through an instance with another tracking name deleted it (the
        # tables are shared, so everything was wiped). Recreate it at 0; its primary key
        # makes a concurrent twin doing the same fail and roll back rather than apply twice.
        connection.execute(insert(PROJECTION_TRACKING).values(name=self._name, position=0))
        return 0

    def _insert(self, connection: Connection, entries: Sequence[LogEntry]) -> None:
        metrics, prices = _observation_rows(entries)
        alerts: list[dict[str, Any]] = []
        anomalies: list[dict[str, Any]] = []
        mev: list[dict[str, Any]] = []
        mev_retracted: list[str] = []
        moves: list[dict[str, Any]] = []
        listings: list[LogEntry] = []
        for entry in entries:
            data = entry.data
            if entry.kind in _ALERT_KINDS:
                key = data.get("idempotency_key")
                alerts.append(
                    {
                        "position": entry.position,
                        "rule_id": entry.key,
                        "kind": _ALERT_KINDS[entry.kind],
                        "owner": str(data.get("owner") or ""),
                        "measure": float(data["measure"]),
                        "observed_at": float(data["observed_at"]),
                        "idempotency_key": None if key is None else str(key),
                        "recorded_at": entry.recorded_at,
                    }
                )
            elif entry.kind in _PROTOCOL_KINDS:
                listings.append(entry)
            elif entry.kind == "mev_detected":
                mev.append(_mev_row(entry))
            elif entry.kind == "mev_retracted":
                mev_retracted.extend(str(key) for key in data["keys"])
            elif entry.kind == "evm_blocks_recorded":
                recorded = moves_of(int(entry.key), data["blocks"], data["facts"])
                moves.extend({"position": entry.position, **_move_row(m)} for m in recorded)
            elif entry.kind == "evm_blocks_orphaned":
                # In log order: a reorg back to a block recorded earlier in this batch
                # must find its rows gone before they come back.
                if moves:
                    connection.execute(insert(WALLET_MOVES), moves)
                    moves = []
                hashes = [str(block["hash"]) for block in data["blocks"]]
                for chunk in chunked(hashes):
                    connection.execute(
                        delete(WALLET_MOVES).where(WALLET_MOVES.c.block_hash.in_(chunk))
                    )
            elif entry.kind == "anomaly_detected":
                anomalies.append(
                    {
                        "position": entry.position,
                        "subject": entry.key,
                        "series": str(data["series"]),
                        "measure": str(data["measure"]),
                        "observed_at": float(data["observed_at"]),
                        "value": float(data["value"]),
                        "score": float(data["score"]),
                        "direction": str(data["direction"]),
                        "reason": str(data.get("reason") or ""),
                        "recorded_at": entry.recorded_at,
                    }
                )
        # One executemany per table (SQLAlchemy batches it into multi-row INSERTs where
        # the driver allows), not one round trip per row.
        self._insert_detail(connection, metrics, prices)
        if anomalies:
            connection.execute(insert(ANOMALIES), anomalies)
        # Detections before retractions: a batch may hold a detection and its retraction.
        if mev:
            connection.execute(insert(MEV_DETECTIONS), mev)
        for keys in chunked(mev_retracted):
            connection.execute(delete(MEV_DETECTIONS).where(MEV_DETECTIONS.c.key.in_(keys)))
        if moves:
            connection.execute(insert(WALLET_MOVES), moves)
        alerts = self._new_alerts(connection, alerts)
        if alerts:
            connection.execute(insert(ALERT_EVENTS), alerts)
        listed_before: dict[str, Listing | None] = {}
        if listings:
            slugs = {entry.key for entry in listings}
            found = self._rollups.listings(connection, slugs)
            listed_before = {slug: found.get(slug) for slug in slugs}
            self._upsert_protocols(connection, listings)
        self._rollups.apply(connection, metrics, listed_before)
        rule_facts = [entry for entry in entries if entry.kind in RULE_FACT_KINDS]
        if rule_facts:
            self._fold_alert_rules(connection, rule_facts)

    @staticmethod
    def _new_alerts(connection: Connection, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # An idempotency key names one notification: if it shows up again (at another
        # position) it is the same fact, so keep the first. Letting the unique constraint
        # fire instead would make the batch fail on every retry and stall the projection.
        keys = sorted({row["idempotency_key"] for row in alerts} - {None})
        seen: set[str] = set()
        for chunk in chunked(keys):
            seen.update(
                connection.execute(
                    select(ALERT_EVENTS.c.idempotency_key).where(
                        ALERT_EVENTS.c.idempotency_key.in_(chunk)
                    )
                ).scalars()
            )
        fresh = []
        for row in alerts:
            key = row["idempotency_key"]
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            fresh.append(row)
        return fresh

    @staticmethod
    def _upsert_protocols(connection: Connection, listings: Iterable[LogEntry]) -> None:
        # Delete + insert rather than INSERT ... ON CONFLICT, whose SQLAlchemy construct is
        # dialect-specific: inside this transaction (which holds the tracking lock, so no
        # other writer is here) the pair is atomic and identical on both backends.
        listings = list(listings)
        slugs = list(dict.fromkeys(entry.key for entry in listings))
        rows: dict[str, dict[str, Any]] = {}
        versions: list[dict[str, Any]] = []
        for chunk in chunked(slugs):
            for row in connection.execute(select(PROTOCOLS).where(PROTOCOLS.c.slug.in_(chunk))):
                rows[row.slug] = dict(row._mapping)
        for entry in listings:
            # Later entries of the batch win; a missing field keeps its previous value.
            previous = rows.get(entry.key, {})
            data = entry.data
            rows[entry.key] = {
                "slug": entry.key,
                "name": str(data.get("name", previous.get("name", entry.key))),
                "category": str(data.get("category", previous.get("category", ""))),
                "chains": list(data.get("chains", previous.get("chains", []))),
                "url": str(data.get("url", previous.get("url", ""))),
                "oracles": list(data.get("oracles", previous.get("oracles") or [])),
                "position": entry.position,
            }
            observed_at = data.get("observed_at")
            versions.append(
                {
                    **rows[entry.key],
                    "observed_at": None if observed_at is None else float(observed_at),
                }
            )
        for chunk in chunked(slugs):
            connection.execute(delete(PROTOCOLS).where(PROTOCOLS.c.slug.in_(chunk)))
        connection.execute(insert(PROTOCOLS), [rows[slug] for slug in slugs])
        connection.execute(insert(PROTOCOL_LISTINGS), versions)

    @staticmethod
    def _fold_alert_rules(connection: Connection, entries: Sequence[LogEntry]) -> None:
        # Same delete + insert pattern as the protocols (under the tracking lock).
        ids = list(dict.fromkeys(entry.key for entry in entries))
        views: dict[str, AlertRuleView | None] = dict.fromkeys(ids)
        for chunk in chunked(ids):
            for row in connection.execute(
                select(ALERT_RULES).where(ALERT_RULES.c.rule_id.in_(chunk))
            ):
                views[row.rule_id] = _rule_view(row._mapping)
        for entry in entries:
            views[entry.key] = fold_rule(views[entry.key], entry)
        rows = [_rule_row(view) for view in views.values() if view is not None]
        for chunk in chunked(ids):
            connection.execute(delete(ALERT_RULES).where(ALERT_RULES.c.rule_id.in_(chunk)))
        if rows:
            connection.execute(insert(ALERT_RULES), rows)


def _observation_rows(
    entries: Iterable[LogEntry],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``protocol_observations`` and ``price_observations`` rows of ``entries``."""
    metrics: list[dict[str, Any]] = []
    prices: list[dict[str, Any]] = []
    for entry in entries:
        data = entry.data
        if entry.kind == "metric":
            metrics.append(
                {
                    "position": entry.position,
                    "protocol": entry.key,
                    "metric": str(data["metric"]),
                    "chain": str(data.get("chain") or "total"),
                    "observed_at": float(data["observed_at"]),
                    "value": float(data["value"]),
                    "source": str(data.get("source") or ""),
                    "recorded_at": entry.recorded_at,
                }
            )
        elif entry.kind == "price":
            confidence = data.get("confidence")
            prices.append(
                {
                    "position": entry.position,
                    "token": entry.key,
                    "observed_at": float(data["observed_at"]),
                    "price": float(data["price"]),
                    "confidence": None if confidence is None else float(confidence),
                    "source": str(data.get("source") or ""),
                    "recorded_at": entry.recorded_at,
                }
            )
    return metrics, prices


class _SqlHistorySnapshot:
    """``HistorySnapshot`` over one open read transaction."""

    def __init__(self, connection: Connection, position: int, horizon: float | None) -> None:
        self._connection = connection
        self._position = position
        self._horizon = horizon

    @property
    def position(self) -> int:
        return self._position

    @property
    def detail_since(self) -> float | None:
        return self._horizon

    def rows(self, after: int, last: int) -> Iterator[HistoryRow]:
        obs, prices = PROTOCOL_OBSERVATIONS, PRICE_OBSERVATIONS
        found: list[HistoryRow] = [
            HistoryRow(
                int(row.position),
                "metric",
                row.protocol,
                (row.metric, row.chain, float(row.observed_at), float(row.value)),
            )
            for row in self._connection.execute(
                select(obs.c.position, obs.c.protocol, obs.c.metric, obs.c.chain)
                .add_columns(obs.c.observed_at, obs.c.value)
                .where(obs.c.position > after, obs.c.position <= last, *self._held(obs))
            )
        ]
        found.extend(
            HistoryRow(
                int(row.position),
                "price",
                row.token,
                (
                    float(row.observed_at),
                    float(row.price),
                    None if row.confidence is None else float(row.confidence),
                ),
            )
            for row in self._connection.execute(
                select(
                    prices.c.position,
                    prices.c.token,
                    prices.c.observed_at,
                    prices.c.price,
                    prices.c.confidence,
                ).where(prices.c.position > after, prices.c.position <= last, *self._held(prices))
            )
        )
        found.sort(key=lambda row: row.position)
        return iter(found)

    def _held(self, table: Any) -> list[ColumnElement[bool]]:
        # Rows older than the horizon may still sit in a partial week's partition: the
        # log's rows of that time are not expected, so they are not compared either.
        return [] if self._horizon is None else [table.c.observed_at >= self._horizon]

    def listings(self) -> dict[str, ListingRow]:
        return {
            row.slug: ListingRow(
                row.slug, row.name, row.category, tuple(row.chains), row.url, int(row.position)
            )
            for row in self._connection.execute(select(PROTOCOLS))
        }

    def current_values(self) -> CurrentValues:
        st = SERIES_STATES
        statement = select(st.c.protocol, st.c.metric, st.c.chain, st.c.value, st.c.observed_at)
        return {
            (row.protocol, row.metric, row.chain): (float(row.value), float(row.observed_at))
            for row in self._connection.execute(statement.where(st.c.valid_to == OPEN))
        }


def _rule_view(row: Any) -> AlertRuleView:
    return AlertRuleView(
        id=row["rule_id"],
        owner=row["owner"],
        name=row["name"],
        target=stored_target(row["target"]),
        condition=stored_condition(row["condition"]),
        channels=list(row["channels"]),
        cooldown=int(row["cooldown"]),
        state=row["state"],
        firing="firing" if row["firing"] == "firing" else "resolved",
        last_fired_at=row["last_fired_at"],
        transitions=int(row["transitions"]),
        created_position=int(row["created_position"]),
        position=int(row["position"]),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )


def _rule_row(view: AlertRuleView) -> dict[str, Any]:
    return {
        "rule_id": view.id,
        "owner": view.owner,
        "name": view.name,
        "target": view.target.model_dump(),
        "target_key": view.target_key,
        "condition": view.condition.model_dump(),
        "channels": view.channels,
        "cooldown": view.cooldown,
        "state": view.state,
        "firing": view.firing,
        "last_fired_at": view.last_fired_at,
        "transitions": view.transitions,
        "created_position": view.created_position,
        "position": view.position,
        "created_at": view.created_at,
        "updated_at": view.updated_at,
    }


def _listing_details(rows: Iterable[Any]) -> dict[str, ListingDetails]:
    """``protocols`` or ``protocol_listings`` rows as details, by slug."""
    return {
        row.slug: ListingDetails(
            row.slug, row.name, row.category, tuple(row.chains), row.url, tuple(row.oracles or ())
        )
        for row in rows
    }
