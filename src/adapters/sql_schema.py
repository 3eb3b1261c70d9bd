"""The SQL schema shared by the SQLAlchemy adapters: tables, engines, migrations.

The history read model (``sql_history.py``), the delivery log (``sql_delivery_log.py``) and
the tracking rows of both live in one database (a SQLite file embedded, PostgreSQL in
production) whose shape the Alembic revisions in ``migrations/`` own. The ``Table``s here
describe what those revisions create, to build queries; a contract test compares them with a
migrated database so the two cannot drift apart.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator, Sequence
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
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url

__all__ = [
    "ACCOUNT_KEYS",
    "ALERT_EVENTS",
    "ALERT_RULES",
    "ANOMALIES",
    "AUDIT_RECORDS",
    "DELIVERY_ATTEMPTS",
    "DETAIL_TABLES",
    "ERASED_SUBJECTS",
    "GROUP_DAYS",
    "HISTORY_METADATA",
    "HISTORY_RETENTION",
    "MIGRATIONS_DIR",
    "PENDING_NOTIFICATIONS",
    "POSTGRES_ONLY_INDEXES",
    "PRICE_OBSERVATIONS",
    "PROJECTION_TRACKING",
    "PROTOCOLS",
    "PROTOCOL_LISTINGS",
    "PROTOCOL_OBSERVATIONS",
    "SERIES_DAYS",
    "SERIES_STATES",
    "VERSION_TABLE",
    "WALLET_MOVES",
    "adapter_engine",
    "chunked",
    "create_sql_engine",
    "is_detail_partition",
    "migrate",
    "migrated_engine",
    "scrub",
    "write_transaction",
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
    # Migration 0014: the partition key (observed_at) is in every unique key of a partitioned
    # table on PostgreSQL; SQLite has the same key so one shape serves both.
    PrimaryKeyConstraint("position", "observed_at", name="pk_protocol_observations"),
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
    PrimaryKeyConstraint("position", "observed_at", name="pk_price_observations"),
    Index("ix_price_observations_series", "token", "observed_at"),
)
# The raw detail tables (migration 0014): weekly range partitions of ``observed_at`` on
# PostgreSQL (``sql_partitions.py``), what detail retention drops.
DETAIL_TABLES: Final = (PROTOCOL_OBSERVATIONS, PRICE_OBSERVATIONS)


def is_detail_partition(item: Table | Index) -> bool:
    """Whether ``item`` is (an index of) a weekly partition of a detail table: PostgreSQL
    only, made by the writer, not by a revision (``sql_partitions.partition_name``)."""
    table = item if isinstance(item, Table) else item.table
    name = "" if table is None else table.name
    return any(name.startswith(f"{detail.name}_w") for detail in DETAIL_TABLES)


# How far detail is held (ADR 0047): one row, ``detail``, whose ``horizon`` is the time
# before which the raw observations were dropped (no row: everything is held).
HISTORY_RETENTION: Final = Table(
    "history_retention",
    HISTORY_METADATA,
    Column("name", Text(), nullable=False),
    Column("horizon", Double(), nullable=False),
    Column("applied_at", Double(), nullable=False),
    PrimaryKeyConstraint("name", name="pk_history_retention"),
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
    # Migration 0009: NULL in rows written before it, read as no oracles known.
    Column("oracles", JSON(), nullable=True),
    PrimaryKeyConstraint("slug", name="pk_protocols"),
)
# Every listing the log recorded, as it stood after that entry (a missing field kept from
# before), so a cut can show the details of its time (``protocols`` holds today's).
PROTOCOL_LISTINGS: Final = Table(
    "protocol_listings",
    HISTORY_METADATA,
    Column("slug", Text(), nullable=False),
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    # When the details were true (ADR 0017); NULL when unknown: true at any time.
    Column("observed_at", Double(), nullable=True),
    Column("name", Text(), nullable=False),
    Column("category", Text(), nullable=False),
    Column("chains", JSON(), nullable=False),
    Column("url", Text(), nullable=False),
    # Migration 0009: NULL in rows written before it, read as no oracles known.
    Column("oracles", JSON(), nullable=True),
    PrimaryKeyConstraint("slug", "position", name="pk_protocol_listings"),
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
# The history projection's rollups (ADR 0021), derived from the tables above in the same
# transactions: each series' states (one per observed time, with its span and changes), its
# day closes, and each group's sums per day.
SERIES_STATES: Final = Table(
    "series_states",
    HISTORY_METADATA,
    Column("protocol", Text(), nullable=False),
    Column("metric", Text(), nullable=False),
    Column("chain", Text(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("value", Double(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("first_position", BigInteger(), nullable=False),
    Column("valid_to", Double(), nullable=False),
    Column("change_1h", Double(), nullable=True),
    Column("change_1d", Double(), nullable=True),
    Column("change_7d", Double(), nullable=True),
    PrimaryKeyConstraint("protocol", "metric", "chain", "observed_at", name="pk_series_states"),
    Index("ix_series_states_valid_to", "valid_to"),
)
SERIES_DAYS: Final = Table(
    "series_days",
    HISTORY_METADATA,
    Column("protocol", Text(), nullable=False),
    Column("metric", Text(), nullable=False),
    Column("chain", Text(), nullable=False),
    Column("day", Integer(), nullable=False),
    Column("value", Double(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    PrimaryKeyConstraint("protocol", "metric", "chain", "day", name="pk_series_days"),
)
# Indexes the revisions create on PostgreSQL only, outside these Tables: the GiST index over
# each state's span (``history_float8range(observed_at, valid_to, '[)')``) and the partial
# index of the current states, both covering every column a cut reads.
POSTGRES_ONLY_INDEXES: Final = frozenset({"ix_series_states_span", "ix_series_states_current"})
GROUP_DAYS: Final = Table(
    "group_days",
    HISTORY_METADATA,
    Column("dimension", Text(), nullable=False),
    Column("grp", Text(), nullable=False),
    Column("metric", Text(), nullable=False),
    Column("day", Integer(), nullable=False),
    Column("total", Double(), nullable=False),
    Column("counted", Integer(), nullable=False),
    Column("members", Integer(), nullable=False),
    PrimaryKeyConstraint("dimension", "day", "grp", "metric", name="pk_group_days"),
)

# AnomalyDetected events (docs/anomalies.md): ``GET /v2/analytics/anomalies``.
ANOMALIES: Final = Table(
    "anomalies",
    HISTORY_METADATA,
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    Column("subject", Text(), nullable=False),
    Column("series", Text(), nullable=False),
    Column("measure", Text(), nullable=False),
    Column("observed_at", Double(), nullable=False),
    Column("value", Double(), nullable=False),
    Column("score", Double(), nullable=False),
    Column("direction", Text(), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("position", name="pk_anomalies"),
    Index("ix_anomalies_subject", "subject", "observed_at"),
    Index("ix_anomalies_observed_at", "observed_at"),
)

# MevDetected events not retracted since (docs/adr/0050): ``GET /v2/analytics/mev``.
MEV_DETECTIONS: Final = Table(
    "mev_detections",
    HISTORY_METADATA,
    Column("key", Text(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("chain_id", BigInteger(), nullable=False),
    Column("kind", Text(), nullable=False),
    Column("block", BigInteger(), nullable=False),
    Column("block_hash", Text(), nullable=False),
    Column("pool", Text(), nullable=False),
    Column("actor", Text(), nullable=False),
    Column("victim", Text(), nullable=True),
    Column("quote_token", Text(), nullable=False),
    Column("profit", Text(), nullable=False),
    Column("profit_quote", Double(), nullable=False),
    Column("profit_usd", Double(), nullable=True),
    Column("tx_hashes", Text(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    PrimaryKeyConstraint("key", name="pk_mev_detections"),
    Index("ix_mev_detections_pool", "pool", "block"),
    Index("ix_mev_detections_actor", "actor", "block"),
    Index("ix_mev_detections_block", "block"),
)

# Each wallet's side of the swaps and transfers EVM collectors recorded, live blocks only
# (docs/adr/0051): the smart-money features are computed from it on request.
WALLET_MOVES: Final = Table(
    "wallet_moves",
    HISTORY_METADATA,
    Column("position", BigInteger(), nullable=False),
    Column("chain_id", BigInteger(), nullable=False),
    Column("block", BigInteger(), nullable=False),
    Column("block_hash", Text(), nullable=False),
    Column("timestamp", Double(), nullable=False),
    Column("tx_hash", Text(), nullable=False),
    Column("tx_index", Integer(), nullable=False),
    Column("log_index", Integer(), nullable=False),
    Column("wallet", Text(), nullable=False),
    Column("kind", Text(), nullable=False),
    Column("pool", Text(), nullable=True),
    Column("counterparty", Text(), nullable=True),
    Column("token_paid", Text(), nullable=True),
    Column("amount_paid", Text(), nullable=False),
    Column("token_got", Text(), nullable=True),
    Column("amount_got", Text(), nullable=False),
    PrimaryKeyConstraint(
        "chain_id", "block_hash", "tx_hash", "log_index", "wallet", name="pk_wallet_moves"
    ),
    Index("ix_wallet_moves_chain_block", "chain_id", "block", "tx_index", "log_index"),
    Index("ix_wallet_moves_wallet", "wallet", "block"),
    Index("ix_wallet_moves_block_hash", "block_hash"),
)

AUDIT_RECORDS: Final = Table(
    "audit_records",
    HISTORY_METADATA,
    Column("position", BigInteger(), autoincrement=False, nullable=False),
    Column("id", Text(), nullable=False),
    Column("action", Text(), nullable=False),
    Column("at", Double(), nullable=False),
    Column("status", Integer(), nullable=False),
    Column("outcome", Text(), nullable=False),
    Column("account_id", Text(), nullable=True),
    Column("key_id", Text(), nullable=True),
    Column("request_id", Text(), nullable=True),
    Column("client", Text(), nullable=True),
    Column("method", Text(), nullable=False),
    Column("path", Text(), nullable=False),
    Column("detail", JSON(), nullable=False),
    # The span of main log positions an ingest request recorded (migration 0012).
    Column("recorded_first", BigInteger(), nullable=True),
    Column("recorded_last", BigInteger(), nullable=True),
    PrimaryKeyConstraint("position", name="pk_audit_records"),
    Index("ix_audit_records_account", "account_id", "position"),
    Index("ix_audit_records_key", "key_id", "position"),
    Index("ix_audit_records_at", "at"),
    Index("ix_audit_records_recorded", "recorded_last"),
)

PROJECTION_TRACKING: Final = Table(
    "projection_tracking",
    HISTORY_METADATA,
    Column("name", Text(), nullable=False),
    Column("position", BigInteger(), nullable=False),
    PrimaryKeyConstraint("name", name="pk_projection_tracking"),
)

# Not a projection: the accounts' data keys (crypto-shredding, docs/adr/0042), by subject (a
# digest of the owner string). Destroying a key deletes its row; an erased subject is
# remembered so that nothing of it is written in clear afterwards. Rebuilds leave both alone.
ACCOUNT_KEYS: Final = Table(
    "account_keys",
    HISTORY_METADATA,
    Column("subject", Text(), nullable=False),
    Column("key_id", Text(), nullable=False),
    Column("secret", LargeBinary(), nullable=False),
    Column("created_at", Double(), nullable=False),
    PrimaryKeyConstraint("subject", name="pk_account_keys"),
    UniqueConstraint("key_id", name="uq_account_keys_key_id"),
)
ERASED_SUBJECTS: Final = Table(
    "erased_subjects",
    HISTORY_METADATA,
    Column("subject", Text(), nullable=False),
    Column("erased_at", Double(), nullable=False),
    PrimaryKeyConstraint("subject", name="pk_erased_subjects"),
)


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
        # Deleted rows are overwritten with zeros, free pages included: an erased account's
        # rows (and a rule's channels before an update) leave no trace in the file
        # (docs/adr/0042-crypto-shredding.md).
        cursor.execute("PRAGMA secure_delete=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(connection: Connection) -> None:
    # Writers ask for BEGIN IMMEDIATE: it takes SQLite's write lock up front (waiting up to
    # the busy timeout), which is what FOR UPDATE does on PostgreSQL. A deferred
    # transaction that reads and then writes fails with SQLITE_BUSY if another writer
    # committed in between. Readers keep a plain (deferred) BEGIN.
    mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
    connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


# How long closing an engine waits for the connections checked out (a call is
# milliseconds to seconds).
CLOSE_TIMEOUT: Final = 10.0
KEPT_CONNECTIONS: Final = 2
BURST_CONNECTIONS: Final = 10


def create_sql_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2; this project ships psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # Two connections kept per engine, more only for a burst (closed when returned): a
    # process has several read models, and every process of a deployment shares
    # PostgreSQL's connections (100 by default).
    return create_engine(
        parsed, pool_pre_ping=True, pool_size=KEPT_CONNECTIONS, max_overflow=BURST_CONNECTIONS
    )


def migrated_engine(url: str) -> Engine:
    """An engine on ``url`` whose database is at the newest revision (``migrate``)."""
    engine = create_sql_engine(url)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def adapter_engine(target: str | Engine) -> tuple[Engine, bool]:
    """A read model's engine, and whether the read model owns it. A URL: its own engine,
    migrated, closed with the read model. An engine: the process's shared one (the
    container's, migrated by it), closed by its owner: a process's read models then share
    one pool instead of holding connections each."""
    if isinstance(target, Engine):
        return target, False
    return migrated_engine(target), True


def close_engine(engine: Engine, timeout: float = CLOSE_TIMEOUT) -> None:
    """Dispose of ``engine`` once no connection is checked out (waiting at most
    ``timeout``): a call still running in a worker thread at shutdown would otherwise keep
    a connection that ``dispose()`` leaves open for good."""
    deadline = time.monotonic() + timeout
    checked_out = getattr(engine.pool, "checkedout", None)  # not on SQLite's pools
    while checked_out is not None and checked_out() and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.dispose()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
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
    engine = create_sql_engine(target) if isinstance(target, str) else target
    try:
        with _ALEMBIC_LOCK, write_transaction(engine) as connection:
            if connection.dialect.name == "postgresql":
                # Transaction-scoped: released by the commit/rollback below, even if the
                # upgrade fails half way (PostgreSQL DDL is transactional, so a failed
                # upgrade leaves nothing behind either).
                connection.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))
            command.upgrade(_alembic_config(connection), "head")
    finally:
        if isinstance(target, str):
            engine.dispose()


def chunked(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


# How long ``scrub`` waits, at most, for PostgreSQL's older snapshots to end.
SCRUB_WAIT: Final = 30.0
_SCRUB_POLL: Final = 0.1


def scrub(engine: Engine, tables: Sequence[Table], wait: float = SCRUB_WAIT) -> bool:
    """Leave no copy of the rows just deleted from ``tables`` in the database's files;
    whether that is done (False: try again later, e.g. by erasing the account again).

    PostgreSQL never overwrites a row in place: a deleted row stays in the file as a dead
    tuple, and even ``VACUUM FULL`` (which rewrites the tables into new files) copies the
    dead tuples a snapshot older than the delete could still see. So this waits (at most
    ``wait`` seconds) until no transaction of this database holds such a snapshot, then
    rewrites the tables (an exclusive lock for as long as that takes: for rare operations
    such as an erase). SQLite connections delete with ``secure_delete`` (zeroes the rows in
    the pages, ``_sqlite_on_connect``); the WAL still holds the pages as they were until a
    checkpoint, so it is checkpointed and truncated."""
    if engine.dialect.name == "postgresql":
        return _scrub_postgres(engine, tables, wait)
    if engine.dialect.name != "sqlite":
        return False
    # On the driver's connection, outside any transaction (one would hold the WAL).
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy, log_frames, checkpointed = cursor.fetchone() or (1, 0, 0)
        cursor.close()
    finally:
        raw.close()
    return not busy and log_frames == checkpointed


def _scrub_postgres(engine: Engine, tables: Sequence[Table], wait: float) -> bool:
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        # A transaction id taken after the deletes committed. Every snapshot's xmin is the
        # oldest transaction running in the whole cluster (any database), so the deleted
        # rows can go once no transaction older than this one runs anywhere, and no
        # snapshot of this database is older (a read-only one has no id of its own).
        horizon = connection.exec_driver_sql("SELECT txid_current()").scalar_one()
        deadline = time.monotonic() + wait
        while True:
            older = connection.exec_driver_sql(
                "SELECT txid_snapshot_xmin(txid_current_snapshot()) < %(horizon)s "
                "OR EXISTS (SELECT FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_xmin IS NOT NULL "
                "AND age(backend_xmin) >= age((%(horizon)s %% 4294967296)::text::xid))",
                {"horizon": horizon},
            ).scalar_one()
            if not older or time.monotonic() >= deadline:
                break
            time.sleep(_SCRUB_POLL)
        connection.exec_driver_sql(
            "VACUUM (FULL) " + ", ".join(quote(table.name) for table in tables)
        )
    return not older
