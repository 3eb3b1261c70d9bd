"""Checkpoints of a follower's in-memory state, so that a restart replays only the tail.

A follower whose state lives in memory (the node's ``HotState``, the anomaly detector) used
to fold the whole log at every start. With a ``Checkpointer`` it writes its state together
with the position it reflects, in one record, through a ``CheckpointStore`` whose ``save``
is atomic (a crash leaves the old record or the new one, never a mix); on start it loads
the record and replays the log after its position.

The record is a MessagePack envelope (``msgspec``): what it holds (``kind``), the shape of
its body (``version``), which event store it was folded from (``store``), the machine's
byte order (bodies carry float arrays as raw bytes), the position, then the body itself,
decoded by whoever owns the state (``hot_checkpoint``, ``anomaly_checkpoint``). A record of
another kind, version, store or byte order is discarded, and so is one past the log's head
(the store was restored from an older backup): the follower then replays the log, as before.
Nothing here unpickles: a record is data, decoded into typed structs, whoever wrote it.

When (``CheckpointPolicy``): after ``every_events`` positions, or ``every_seconds`` after
the last write when the position moved since, and at a clean shutdown (``close``). A write
captures the state in the event loop (cheap: references to immutable values, or copies of
small mutable ones), then encodes and writes it in a thread, one at a time; the follower
does not wait for it.

That thread is the process's one checkpoint thread (``on_checkpoint_thread``), not any of
the default executor's: glibc's allocator gives each thread an arena of its own, and an
encoded checkpoint's buffers (tens of MB) freed in a different arena each time left every
executor thread's arena holding that much, free but not returned: ``serve``'s RSS grew ~25
MB a checkpoint in the one-hour soak until each executor thread had written one. On one
thread each write reuses the last one's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar

import msgspec

from .ports import CheckpointStore

__all__ = ["Capture", "CheckpointPolicy", "Checkpointer", "Restored", "on_checkpoint_thread"]

log = logging.getLogger(__name__)

ENCODER: Final = msgspec.msgpack.Encoder()


class _Envelope(msgspec.Struct, frozen=True):
    kind: str
    version: int
    store: str
    byteorder: str
    position: int
    body: msgspec.Raw


_DECODER: Final = msgspec.msgpack.Decoder(_Envelope)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# One thread for every checkpoint load and write of the process (the module docstring:
# one allocator arena for their large buffers). Started at the first use.
_CHECKPOINT_THREAD: Final = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")


async def on_checkpoint_thread(
    function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``function(*args, **kwargs)`` on the process's checkpoint thread, awaited."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _CHECKPOINT_THREAD, functools.partial(function, *args, **kwargs)
    )


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """How often a checkpoint is written while the follower runs (0: never for that
    reason). A clean shutdown writes one whatever the policy."""

    every_events: int = 200_000
    every_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Capture:
    """A state as of ``position``, and how to encode it (called in a thread: it must only
    read what the capture holds, never the live state)."""

    position: int
    encode: Callable[[], bytes]


@dataclass(frozen=True, slots=True)
class Restored:
    """A checkpoint that matched: its position and its undecoded body."""

    position: int
    body: bytes


class Checkpointer:
    """Loads and writes one follower's checkpoint (``name`` in the store).

    ``capture`` returns the state to write, or None when there is nothing trustworthy to
    write (the follower never started, or is between a failure and its rebuild).
    ``head`` reads the log's head (blocking; a loaded record beyond it is discarded).
    """

    def __init__(
        self,
        store: CheckpointStore,
        name: str,
        *,
        kind: str,
        version: int,
        store_id: str,
        head: Callable[[], int],
        policy: CheckpointPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.kind = kind
        self.version = version
        self.store_id = store_id
        self.head = head
        self.policy = policy or CheckpointPolicy()
        self.clock = clock
        self.capture: Callable[[], Capture | None] = lambda: None
        self.saved_position = 0  # the position of the newest record known to be in the store
        self._saved_at = clock()
        self._writing: asyncio.Task[None] | None = None
        self.written = 0  # checkpoints written (a counter)

    async def load(self) -> Restored | None:
        """The stored checkpoint, if it is of this kind, version and store and not beyond
        the log's head; None otherwise (the caller replays the log)."""
        data = await on_checkpoint_thread(self.store.load, self.name)
        if data is None:
            return None
        try:
            envelope = _DECODER.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("checkpoint %s unreadable, replaying the log: %s", self.name, error)
            return None
        expected = (self.kind, self.version, self.store_id, sys.byteorder)
        found = (envelope.kind, envelope.version, envelope.store, envelope.byteorder)
        if found != expected:
            log.info(
                "checkpoint %s is %s v%d of another store or machine, not %s v%d: "
                "replaying the log",
                self.name,
                envelope.kind,
                envelope.version,
                self.kind,
                self.version,
            )
            return None
        head = await asyncio.to_thread(self.head)
        if envelope.position > head:
            log.warning(
                "checkpoint %s at %d is beyond the log's head %d: replaying the log",
                self.name,
                envelope.position,
                head,
            )
            return None
        self.saved_position = envelope.position
        return Restored(envelope.position, bytes(envelope.body))

    def envelope(self, position: int, body: bytes) -> bytes:
        """A record of ``body`` as of ``position`` (tests write old shapes with it)."""
        return ENCODER.encode(
            _Envelope(
                kind=self.kind,
                version=self.version,
                store=self.store_id,
                byteorder=sys.byteorder,
                position=position,
                body=msgspec.Raw(body),
            )
        )

    def advanced(self, position: int) -> None:
        """The follower reached ``position``: start a write in the background when the
        policy says one is due and none is under way."""
        if self._writing is not None or position <= self.saved_position:
            return
        policy = self.policy
        by_count = 0 < policy.every_events <= position - self.saved_position
        by_time = 0 < policy.every_seconds <= self.clock() - self._saved_at
        if not (by_count or by_time):
            return
        capture = self.capture()
        if capture is None:
            return
        self._writing = asyncio.create_task(self._write(capture), name=f"checkpoint {self.name}")
        self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if not task.cancelled() and task.exception() is not None:
            # The old record stays; the next due write tries again.
            log.error("checkpoint %s failed: %s", self.name, task.exception())

    async def _write(self, capture: Capture) -> None:
        def encode_and_save() -> None:
            self.store.save(self.name, self.envelope(capture.position, capture.encode()))

        await on_checkpoint_thread(encode_and_save)
        self.saved_position = capture.position
        self._saved_at = self.clock()
        self.written += 1
        log.info("checkpoint %s written at position %d", self.name, capture.position)

    async def flush(self) -> None:
        """Wait for the write under way, then write the current state if it moved past
        the stored record (clean shutdown)."""
        if self._writing is not None:
            with contextlib.suppress(Exception):
                await self._writing
        capture = self.capture()
        if capture is None or capture.position <= self.saved_position:
            return
        await self._write(capture)
