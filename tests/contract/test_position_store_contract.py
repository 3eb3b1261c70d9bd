"""One ``PositionStore`` contract, run against the in-memory and the SQL adapters."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from defi_realtime.adapters.position_stores import InMemoryPositionStore, SqlPositionStore
from defi_realtime.application.ports import PositionStore
from tests.services import postgres_url

StoreFactory = Callable[[], PositionStore]


class PositionStoreContract:
    """Subclasses provide ``make_store``: each call is a new instance over the same storage
    (a process restart for durable stores)."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError

    async def test_an_unknown_name_is_at_position_zero(self, make_store: StoreFactory) -> None:
        assert await make_store().load("relay") == 0

    async def test_save_then_load(self, make_store: StoreFactory) -> None:
        store = make_store()
        await store.save("relay", 42)
        assert await store.load("relay") == 42
        await store.save("relay", 43)
        assert await store.load("relay") == 43

    async def test_names_are_independent(self, make_store: StoreFactory) -> None:
        store = make_store()
        await store.save("relay", 7)
        await store.save("history", 2**40)
        assert await store.load("relay") == 7
        assert await store.load("history") == 2**40
        assert await store.load("other") == 0

    async def test_concurrent_saves_of_different_names(self, make_store: StoreFactory) -> None:
        store = make_store()
        await asyncio.gather(*(store.save(f"follower-{i}", i * 10) for i in range(20)))
        loaded = await asyncio.gather(*(store.load(f"follower-{i}") for i in range(20)))
        assert loaded == [i * 10 for i in range(20)]


class TestInMemoryPositionStore(PositionStoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return InMemoryPositionStore


class SqlContract(PositionStoreContract):
    """Durable stores: ``make_store`` opens a new instance (a restart) on the same table."""

    @pytest.fixture
    def sql_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def make_store(self, sql_url: str) -> Iterator[StoreFactory]:
        table = f"log_follower_positions_{uuid.uuid4().hex[:12]}"
        stores: list[SqlPositionStore] = []

        def make() -> PositionStore:
            store = SqlPositionStore(sql_url, table=table)
            stores.append(store)
            return store

        yield make
        if stores:
            with stores[0].engine.begin() as conn:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
        for store in stores:
            store.close()

    async def test_a_position_survives_a_restart(self, make_store: StoreFactory) -> None:
        await make_store().save("relay", 1234)
        assert await make_store().load("relay") == 1234


class TestSqlitePositionStore(SqlContract):
    @pytest.fixture
    def sql_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'positions.db'}"

    def test_the_default_table_is_log_follower_positions(self, tmp_path: Path) -> None:
        store = SqlPositionStore(f"sqlite:///{tmp_path / 'default.db'}")
        try:
            assert store.table_name == "log_follower_positions"
            with store.engine.connect() as conn:
                names = conn.execute(text("SELECT name FROM sqlite_master")).scalars().all()
            assert "log_follower_positions" in names
        finally:
            store.close()

    def test_a_save_waits_out_another_writer_longer_than_the_driver_default(
        self, tmp_path: Path
    ) -> None:
        """The history projection shares the file and may hold its write lock for seconds;
        a follower saving its position then must wait, not fail with "database is locked"
        after the sqlite3 driver's default 5 s (CI saw the alerts follower fail so)."""
        path = tmp_path / "shared.db"
        store = SqlPositionStore(f"sqlite:///{path}")
        held = threading.Event()

        def hold_the_write_lock() -> None:
            other = sqlite3.connect(path, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                held.set()
                time.sleep(6.0)
                other.execute("COMMIT")
            finally:
                other.close()

        holder = threading.Thread(target=hold_the_write_lock)
        holder.start()
        try:
            assert held.wait(5)
            started = time.monotonic()
            store.save_sync("alerts", 76_000)
            assert time.monotonic() - started > 5.0  # it did wait for the other writer
            assert store.load_sync("alerts") == 76_000
        finally:
            holder.join(10)
            store.close()

    def test_an_invalid_table_name_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="invalid table name"):
            SqlPositionStore(f"sqlite:///{tmp_path / 'x.db'}", table="x; drop table y")


class TestInMemorySqlitePositionStore(PositionStoreContract):
    """``sqlite://`` shares one connection across worker threads (not durable)."""

    @pytest.fixture
    def make_store(self) -> Iterator[StoreFactory]:
        stores: list[SqlPositionStore] = []

        def make() -> PositionStore:
            store = SqlPositionStore("sqlite://")
            stores.append(store)
            return store

        yield make
        for store in stores:
            store.close()


@pytest.mark.postgres
class TestPostgresPositionStore(SqlContract):
    @pytest.fixture
    def sql_url(self) -> str:
        url = make_url(postgres_url()).set(drivername="postgresql+psycopg")
        return url.render_as_string(hide_password=False)

    def test_workers_starting_together_all_get_the_table(self, sql_url: str) -> None:
        """Workers starting at once on a fresh database race to create the table; each must
        start (the loser failed with a UniqueViolation on pg_type before the creation lock).
        Threads released by a barrier, each with its own store and connection pool, hit the
        race far more often than processes would."""
        table = f"positions_{uuid.uuid4().hex[:12]}"
        admin = create_engine(sql_url)
        workers = 8
        barrier = threading.Barrier(workers)

        def start() -> None:
            barrier.wait()
            SqlPositionStore(postgres_url(), table=table).close()

        try:
            for _ in range(5):
                with ThreadPoolExecutor(workers) as pool:
                    for future in [pool.submit(start) for _ in range(workers)]:
                        future.result(timeout=60)
                with admin.begin() as conn:
                    conn.execute(text(f'DROP TABLE "{table}"'))
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}"'))
            admin.dispose()

    async def test_a_plain_postgresql_url_uses_psycopg3(self) -> None:
        store = SqlPositionStore(postgres_url(), table=f"positions_{uuid.uuid4().hex[:12]}")
        try:
            assert store.engine.dialect.driver == "psycopg"
            await store.save("relay", 5)
            assert await store.load("relay") == 5
        finally:
            with store.engine.begin() as conn:
                conn.execute(text(f'DROP TABLE "{store.table_name}"'))
            store.close()
