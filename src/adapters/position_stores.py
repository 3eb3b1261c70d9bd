"""``PositionStore`` adapters: in memory (tests, embedded) and SQL (SQLite / PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import zlib
from typing import Final

from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from .sql_schema import close_engine, create_sql_engine, write_transaction

__all__ = ["DEFAULT_POSITIONS_TABLE", "InMemoryPositionStore", "SqlPositionStore"]

DEFAULT_POSITIONS_TABLE = "log_follower_positions"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Serialises the table's creation across processes on PostgreSQL (see ``_create_table``).
_CREATE_LOCK_KEY: Final = zlib.crc32(b"defi_realtime.positions.create")


class InMemoryPositionStore:
    """Positions in a dict: lost on restart, shared only through the same instance."""

    def __init__(self) -> None:
        self._positions: dict[str, int] = {}

    async def load(self, name: str) -> int:
        return self._positions.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        self._positions[name] = position


class SqlPositionStore:
    """Positions in the table ``log_follower_positions(name primary key, position)``.

    Works with any SQLAlchemy 2 URL; tested with ``sqlite:///path`` and
    ``postgresql+psycopg://...``. The table is created when missing. ``load``/``save``
    run the blocking database call in a worker thread (``asyncio.to_thread``), and each
    ``save`` commits on its own, so a saved position survives a crash right after it.
    Call ``close()`` to release the connection pool.
    """

    def __init__(self, target: str | Engine, *, table: str = DEFAULT_POSITIONS_TABLE) -> None:
        if not _TABLE_NAME.match(table):
            raise ValueError(f"invalid table name: {table!r}")
        # A URL: its own engine; the process's shared engine otherwise (sql_schema).
        self._owns_engine = isinstance(target, str)
        self._engine, shared_connection = (
            _create_engine(target) if isinstance(target, str) else (target, False)
        )
        self._lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if shared_connection else contextlib.nullcontext()
        )
        self._table = Table(
            table,
            MetaData(),
            Column("name", String(200), primary_key=True),
            Column("position", BigInteger, nullable=False),
        )
        self._create_table()

    def _create_table(self) -> None:
        """Create the table if missing. Several processes start at once (a relay and a
        projection worker on a fresh database): "check, then CREATE" races, and the loser's
        CREATE fails on PostgreSQL's catalogue (``pg_type_typname_nsp_index``). An advisory
        lock held for the transaction makes the others wait, then find the table."""
        with self._lock, self._engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(_CREATE_LOCK_KEY)))
            self._table.create(connection, checkfirst=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def table_name(self) -> str:
        return self._table.name

    async def load(self, name: str) -> int:
        return await asyncio.to_thread(self.load_sync, name)

    async def save(self, name: str, position: int) -> None:
        await asyncio.to_thread(self.save_sync, name, position)

    def load_sync(self, name: str) -> int:
        table = self._table
        with self._lock, self._engine.connect() as conn:
            value = conn.execute(
                select(table.c.position).where(table.c.name == name)
            ).scalar_one_or_none()
        return 0 if value is None else int(value)

    def save_sync(self, name: str, position: int) -> None:
        with self._lock, write_transaction(self._engine) as conn:
            self._upsert(conn, name, position)

    def _upsert(self, conn: Connection, name: str, position: int) -> None:
        table = self._table
        values = {"name": name, "position": position}
        dialect = conn.dialect.name
        if dialect in {"postgresql", "sqlite"}:
            upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            conn.execute(
                upsert.values(**values).on_conflict_do_update(
                    index_elements=[table.c.name], set_={"position": position}
                )
            )
            return
        # Portable fallback for other dialects (racy between concurrent first saves of
        # one name, which a single follower per name never does).
        result = conn.execute(update(table).where(table.c.name == name).values(position=position))
        if result.rowcount == 0:
            conn.execute(insert(table).values(**values))

    def close(self) -> None:
        if self._owns_engine:
            close_engine(self._engine)


def _create_engine(url: str) -> tuple[Engine, bool]:
    """The engine, and whether all calls must be serialised on one shared connection."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        # An in-memory SQLite database exists per connection: share one connection across
        # the worker threads, or every to_thread call would see an empty database.
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
        return engine, True
    # A file or a server: the project's engine. On SQLite that waits out another writer
    # (the history projection shares the file and may hold its lock for seconds) instead
    # of failing after the driver's default 5 s, and takes the write lock up front.
    return create_sql_engine(url), False
