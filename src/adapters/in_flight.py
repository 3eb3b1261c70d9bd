"""Closing a blocking adapter whose calls run in worker threads.

A call handed to ``asyncio.to_thread`` goes on after its task is cancelled at shutdown. If
the adapter closes meanwhile, the call meets a closed store: SQLite crashed the process on
that, and a SQLAlchemy connection checked out across ``dispose()`` is never closed. An
adapter counts its calls with ``Calls``; ``close`` waits for those under way and refuses
later ones.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Final

# How long closing waits for the calls under way (one is milliseconds to seconds).
CLOSE_TIMEOUT: Final = 10.0


class ClosedError(RuntimeError):
    """The adapter was closed (its process is shutting down)."""


class Calls:
    """The calls under way on one adapter."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._under_way = 0
        self._closed = False
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        with self._idle:
            if self._closed:
                raise ClosedError(f"{self._what} is closed")
            self._under_way += 1
        try:
            yield
        finally:
            with self._idle:
                self._under_way -= 1
                self._idle.notify_all()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Refuse new calls and wait (bounded) for those under way to end."""
        with self._idle:
            self._closed = True
            self._idle.wait_for(lambda: self._under_way == 0, timeout)
