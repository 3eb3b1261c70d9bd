"""Closing a SQL adapter while a call still runs in a worker thread (as at shutdown, when
the task awaiting ``asyncio.to_thread`` was cancelled but its thread goes on)."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from defi_realtime.adapters.sql_schema import close_engine, create_sql_engine
from tests.services import postgres_url


def test_closing_waits_for_a_checked_out_connection_and_closes_it() -> None:
    engine = create_sql_engine(postgres_url())
    inside, done = threading.Event(), threading.Event()
    seen: list[object] = []

    def slow_call() -> None:
        with engine.connect() as connection:
            seen.append(connection.connection.dbapi_connection)
            inside.set()
            connection.execute(text("SELECT pg_sleep(0.3)"))
        done.set()

    worker = threading.Thread(target=slow_call)
    worker.start()
    assert inside.wait(5)
    started = time.monotonic()
    close_engine(engine)
    assert done.is_set(), "disposed while a connection was checked out"
    assert time.monotonic() - started >= 0.1
    worker.join(5)
    [raw] = seen
    # Closed, not left open for the garbage collector (a ResourceWarning at some later test).
    assert raw.closed  # type: ignore[attr-defined]
