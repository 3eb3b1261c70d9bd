"""``HistoryReadModel`` on SQLAlchemy 2 Core: every observation as queryable history.

One code path serves ``sqlite:///path.db`` (the embedded default) and
``postgresql+psycopg://...`` (production). The schema is owned by the Alembic revisions in
``migrations/`` next to this file; ``migrate(url)`` upgrades a database to head and the
read model's constructor calls it.

Exactly-once: every ``apply`` runs in one transaction that first locks this projection's
row in ``projection_tracking`` (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite), so two workers applying the same batch serialise: the second sees
the new position and skips what the first wrote.
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from ..application.alert_rules import RULE_FACT_KINDS, AlertRuleView, fold_rule
from ..application.log import LogBatch, LogEntry, LogGapError
from ..application.views import Series, SeriesPoint, SeriesQuery

__all__ = [
    "ALERT_EVENTS",
    "ALERT_RULES",
    "DELIVERY_ATTEMPTS",
    "HISTORY_METADATA",
    "MIGRATIONS_DIR",
    "PENDING_NOTIFICATIONS",
    "PRICE_OBSERVATIONS",
    "PROJECTION_TRACKING",
    "PROTOCOLS",
    "PROTOCOL_OBSERVATIONS",
    "VERSION_TABLE",
    "SqlHistoryReadModel",
    "migrate",
]

MIGRATIONS_DIR: Final = Path(__file__).resolve().with_name("migrations")
# Alembic's bookkeeping table, named for this schema so it cannot collide with another
# Alembic-managed schema in the same PostgreSQL database.
VERSION_TABLE: Final = "history_alembic_version"
# Key of the PostgreSQL advisory lock that serialises concurrent ``migrate`` calls.
_MIGRATION_LOCK_KEY: Final = zlib.crc32(b"defi_realtime.history.migrate")
_SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Execution option read by the SQLite "begin" listener: which BEGIN to emit.
_SQLITE_BEGIN: Final = "defi_realtime_sqlite_begin"
# Bound-parameter lists (IN (...)) are cut to this size: SQLite caps variables per statement.
_IN_CHUNK: Final = 500
DEFAULT_TRACKING_NAME: Final = "history"
# Alembic runs env.py and the revisions through module-global proxies (``alembic.context``,
# ``alembic.op``): two upgrades in threads of one process would clobber each other's
# state, so they take turns here before competing for the database lock.
_ALEMBIC_LOCK: Final = threading.Lock()

# The shape the Alembic revisions create, used to build queries. A test compares it with
# a migrated database so the two cannot drift apart.
HISTORY_METADATA: Final = MetaData()

PROTOCOL_OBSERVATIONS: Final = Table(
    "protocol_observations",
    HISTORY_METADATA,
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    Column("protocol", Text(), nullable=False),
    Column("metric", Text(), nullable=False),
    Column("chain", Text(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("value", Double(), nullable=False),
    Column("source", Text(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("position", name="pk_protocol_observations"),
    Index("ix_protocol_observations_series", "protocol", "metric", "chain", "observed_at"),
)
PRICE_OBSERVATIONS: Final = Table(
    "price_observations",
    HISTORY_METADATA,
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    Column("token", Text(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("price", Double(), nullable=False),
    Column("confidence", Double(), nullable=True),
    Column("source", Text(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("position", name="pk_price_observations"),
    Index("ix_price_observations_series", "token", "observed_at"),
)
PROTOCOLS: Final = Table(
    "protocols",
    HISTORY_METADATA,
    Column("slug", Text(), nullable=False),
    Column("name", Text(), nullable=False),
    Column("category", Text(), nullable=False),
    Column("chains", JSON(), nullable=False),
    Column("url", Text(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    PrimaryKeyConstraint("slug", name="pk_protocols"),
)
ALERT_EVENTS: Final = Table(
    "alert_events",
    HISTORY_METADATA,
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    Column("rule_id", Text(), nullable=False),
    Column("kind", Text(), nullable=False),
    Column("owner", Text(), nullable=False),
    Column("measure", Double(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("idempotency_key", Text(), nullable=True),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("position", name="pk_alert_events"),
    UniqueConstraint("idempotency_key", name="uq_alert_events_idempotency_key"),
    Index("ix_alert_events_rule", "rule_id", "observed_at"),
)
# Not a projection: every notification delivery attempt (adapters/sql_delivery_log.py). It
# shares this schema (and its migrations) but ``reset`` leaves it alone, since the log cannot
# rebuild it.
DELIVERY_ATTEMPTS: Final = Table(
    "delivery_attempts",
    HISTORY_METADATA,
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("rule_id", Text(), nullable=False),
    Column("owner", Text(), nullable=False),
    Column("idempotency_key", Text(), nullable=False),
    Column("channel_kind", Text(), nullable=False),
    Column("channel_target", Text(), nullable=False),
    Column("attempt", Integer(), nullable=False),
    Column("status", Text(), nullable=False),
    Column("http_status", Integer(), nullable=True),
    Column("error", Text(), nullable=True),
    Column("condition", Text(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("started_at", Double(), nullable=False),
    Column("finished_at", Double(), nullable=False),
    Index("ix_delivery_attempts_key", "idempotency_key"),
    Index("ix_delivery_attempts_rule", "rule_id", "id"),
)
# Not a projection either: notification jobs handed to the in-process queue and not settled
# yet (migration 0004), so that a restart enqueues them again (adapters/sql_delivery_log.py).
PENDING_NOTIFICATIONS: Final = Table(
    "pending_notifications",
    HISTORY_METADATA,
    Column("idempotency_key", Text(), nullable=False),
    Column("rule_id", Text(), nullable=False),
    Column("job", JSON(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("idempotency_key", name="pk_pending_notifications"),
)
# Each rule as its owner lists it (migration 0002), folded with ``fold_rule``.
ALERT_RULES: Final = Table(
    "alert_rules",
    HISTORY_METADATA,
    Column("rule_id", Text(), nullable=False),
    Column("owner", Text(), nullable=False),
    Column("name", Text(), nullable=False),
    Column("target", JSON(), nullable=False),
    Column("target_key", Text(), nullable=False),
    Column("condition", JSON(), nullable=False),
    Column("channels", JSON(), nullable=False),
    Column("cooldown", BigInteger(), nullable=False),
    Column("state", Text(), nullable=False),
    Column("firing", Text(), nullable=False),
    Column("last_fired_at", Double(), nullable=True),
    Column("transitions", BigInteger(), nullable=False),
    Column("created_position", BigInteger(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("created_at", Double(), nullable=False),
    Column("updated_at", Double(), nullable=False),
    PrimaryKeyConstraint("rule_id", name="pk_alert_rules"),
    Index("ix_alert_rules_owner", "owner", "created_position"),
    Index("ix_alert_rules_state", "state"),
)
PROJECTION_TRACKING: Final = Table(
    "projection_tracking",
    HISTORY_METADATA,
    Column("name", Text(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    PrimaryKeyConstraint("name", name="pk_projection_tracking"),
)
_FACT_TABLES: Final = (
    PROTOCOL_OBSERVATIONS,
    PRICE_OBSERVATIONS,
    PROTOCOLS,
    ALERT_EVENTS,
    ALERT_RULES,
)
_PROTOCOL_KINDS: Final = frozenset({"protocol_listed", "protocol_updated"})
_ALERT_KINDS: Final = {"alert_triggered": "triggered", "alert_resolved": "resolved"}


# --- engine -----------------------------------------------------------------------------


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module only emits BEGIN before the first INSERT/UPDATE/DELETE, so the
    # tracking read in ``apply`` would run outside the transaction. Switch its own
    # transaction handling off; ``_sqlite_on_begin`` emits BEGIN instead (SQLAlchemy's
    # documented recipe). COMMIT/ROLLBACK still go through the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Wait for another connection's lock instead of failing with "database is locked";
        # set first, since switching the journal mode below needs a lock too.
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers (series) never block the writer (apply) and vice versa.
        cursor.execute("PRAGMA journal_mode=WAL")
        # Durable at each checkpoint; the usual pairing with WAL.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers ask for BEGIN IMMEDIATE: it takes SQLite's write lock up front (waiting up to
    # the busy timeout), which is what FOR UPDATE does on PostgreSQL. A deferred
    # transaction that reads and then writes fails with SQLITE_BUSY if another writer
    # committed in between. Readers keep a plain (deferred) BEGIN.
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def _create_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2; this project ships psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that may write: commits on success, rolls back on any exception."""
    with engine.connect() as connection:
        connection.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
        with connection.begin():
            yield connection


# --- migrations -------------------------------------------------------------------------


def _alembic_config(connection: Connection) -> Config:
    config = Config()
    # ConfigParser interpolates '%': escape it in case the install path contains one.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_table", VERSION_TABLE)
    config.attributes["connection"] = connection
    return config


def migrate(target: str | Engine) -> None:
    """Upgrade the history schema to the newest revision (a no-op when it is current).

    Safe to call from several processes at once: on PostgreSQL the upgrade runs inside a
    transaction holding an advisory lock, on SQLite inside ``BEGIN IMMEDIATE``. Either
    way the losers wait, then find the schema at head and do nothing.
    """
    engine = _create_engine(target) if isinstance(target, str) else target
    try:
        with _ALEMBIC_LOCK, _write_transaction(engine) as connection:
            if connection.dialect.name == "postgresql":
                # Transaction-scoped: released by the commit/rollback below, even if the
                # upgrade fails half way (PostgreSQL DDL is transactional, so a failed
                # upgrade leaves nothing behind either).
                connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            command.upgrade(_alembic_config(connection), "head")
    finally:
        if isinstance(target, str):
            engine.dispose()


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


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


# --- the read model ---------------------------------------------------------------------


class SqlHistoryReadModel:
    """Every metric, price, listing and alert fact of the log, in SQL tables.

    Implements the ``HistoryReadModel`` port. Synchronous: call it from a worker thread.
    The constructor creates the engine and migrates the schema; ``close()`` disposes of the
    engine. Several instances (processes) may share one database: ``apply`` is exactly
    once per tracking ``name``.
    """

    def __init__(self, url: str, *, name: str = DEFAULT_TRACKING_NAME) -> None:
        self._name = name
        self._engine = _create_engine(url)
        try:
            migrate(self._engine)
            self._ensure_tracking_row()
        except BaseException:
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
        with _write_transaction(self._engine) as connection:
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
        with _write_transaction(self._engine) as connection:
            # Lock first so a concurrent apply cannot interleave with the deletes.
            self._lock_position(connection)
            for table in _FACT_TABLES:
                connection.execute(delete(table))
            connection.execute(delete(PROJECTION_TRACKING))
            # Recreate our row at 0 so later applies still have a row to lock.
            connection.execute(insert(PROJECTION_TRACKING).values(name=self._name, position=0))

    def close(self) -> None:
        """Release the connection pool."""
        self._engine.dispose()

    # -- reading -------------------------------------------------------------------------

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
            with _write_transaction(self._engine) as connection:
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
        metrics: list[dict[str, Any]] = []
        prices: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        listings: list[LogEntry] = []
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
            elif entry.kind in _ALERT_KINDS:
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
        # One executemany per table (SQLAlchemy batches it into multi-row INSERTs where
        # the driver allows), not one round trip per row.
        if metrics:
            connection.execute(insert(PROTOCOL_OBSERVATIONS), metrics)
        if prices:
            connection.execute(insert(PRICE_OBSERVATIONS), prices)
        alerts = self._new_alerts(connection, alerts)
        if alerts:
            connection.execute(insert(ALERT_EVENTS), alerts)
        if listings:
            self._upsert_protocols(connection, listings)
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
        for chunk in _chunks(keys):
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
        for chunk in _chunks(slugs):
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
                "position": entry.position,
            }
        for chunk in _chunks(slugs):
            connection.execute(delete(PROTOCOLS).where(PROTOCOLS.c.slug.in_(chunk)))
        connection.execute(insert(PROTOCOLS), [rows[slug] for slug in slugs])

    @staticmethod
    def _fold_alert_rules(connection: Connection, entries: Sequence[LogEntry]) -> None:
        # Same delete + insert pattern as the protocols (under the tracking lock).
        ids = list(dict.fromkeys(entry.key for entry in entries))
        views: dict[str, AlertRuleView | None] = dict.fromkeys(ids)
        for chunk in _chunks(ids):
            for row in connection.execute(
                select(ALERT_RULES).where(ALERT_RULES.c.rule_id.in_(chunk))
            ):
                views[row.rule_id] = _rule_view(row._mapping)
        for entry in entries:
            views[entry.key] = fold_rule(views[entry.key], entry)
        rows = [_rule_row(view) for view in views.values() if view is not None]
        for chunk in _chunks(ids):
            connection.execute(delete(ALERT_RULES).where(ALERT_RULES.c.rule_id.in_(chunk)))
        if rows:
            connection.execute(insert(ALERT_RULES), rows)


def _rule_view(row: Any) -> AlertRuleView:
    return AlertRuleView(
        id=row["rule_id"],
        owner=row["owner"],
        name=row["name"],
        target=dict(row["target"]),
        condition=dict(row["condition"]),
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
        "target": view.target,
        "target_key": view.target_key,
        "condition": view.condition,
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
