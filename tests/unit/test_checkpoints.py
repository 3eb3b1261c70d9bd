"""Checkpoints of in-memory state (ADR 0046): written atomically with their position, a
crash in the middle leaves the old one; records of another version, store or beyond the
log's head are discarded; a follower restored from one replays only the log after it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from defi_realtime.adapters.file_checkpoints import FileCheckpointStore
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.application import hot_checkpoint
from defi_realtime.application.anomaly import Detection, DetectorSettings
from defi_realtime.application.anomaly_follower import AnomalyFollower
from defi_realtime.application.checkpoints import Checkpointer, CheckpointPolicy
from defi_realtime.application.hot_checkpoint import CheckpointedHotState
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry

T0 = 1_700_000_000.0
HOUR = 3_600.0


class CountingLog:
    """An ``EventLog`` over a list of entries at positions 1..n that counts what it reads."""

    def __init__(self, entries: list[LogEntry]) -> None:
        self.entries = entries
        self.read_entries = 0

    def read(self, after: int, limit: int) -> LogBatch:
        chosen = tuple(self.entries[after : after + limit])
        self.read_entries += len(chosen)
        return LogBatch(after, chosen[-1].position if chosen else after, chosen)

    def head(self) -> int:
        return len(self.entries)


def metrics(count: int) -> list[LogEntry]:
    entries = []
    for position in range(1, count + 1):
        slug = ("aave", "lido", "curve")[position % 3]
        data: dict[str, Any] = {
            "metric": "tvl",
            "chain": "total",
            "value": 1e6 * (1 + (position % 7) / 10),
            "observed_at": T0 + position * HOUR,
            "source": "test",
        }
        entries.append(LogEntry(position, "metric", slug, data, recorded_at=T0))
    return entries


def checkpointer(
    store: FileCheckpointStore,
    log: CountingLog,
    *,
    version: int = hot_checkpoint.FORMAT_VERSION,
    store_id: str = "store-a",
    policy: CheckpointPolicy | None = None,
    kind: str = hot_checkpoint.KIND,
) -> Checkpointer:
    return Checkpointer(
        store,
        "hot-state",
        kind=kind,
        version=version,
        store_id=store_id,
        head=log.head,
        policy=policy or CheckpointPolicy(every_events=0, every_seconds=0),
    )


async def caught_up(entries: list[LogEntry], store: FileCheckpointStore) -> HotState:
    """A hot state folded from ``entries``, checkpointed at their end, as a node shut down."""
    log = CountingLog(entries)
    hot = CheckpointedHotState(HotState(), checkpointer(store, log))
    await hot.runner(log, "live").catch_up()
    await hot.close()
    return hot.state


# -- the file store -------------------------------------------------------------------------


def test_a_failure_in_the_middle_of_a_write_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileCheckpointStore(tmp_path)
    store.save("hot-state", b"old" * 1000)

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        store.save("hot-state", b"new" * 1000)
    monkeypatch.undo()
    assert store.load("hot-state") == b"old" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hot-state.ckpt"]  # no leftover
    store.save("hot-state", b"new")
    assert store.load("hot-state") == b"new"


_WRITER = """
import sys
from pathlib import Path
from defi_realtime.adapters.file_checkpoints import FileCheckpointStore

store = FileCheckpointStore(Path(sys.argv[1]))
# A large record: the writer is killed while it writes it.
data = b"N" * (128 * 1024 * 1024)
print("writing", flush=True)
store.save("hot-state", data)
print("written", flush=True)
"""


def test_a_writer_killed_in_the_middle_of_a_checkpoint_leaves_the_old_one(
    tmp_path: Path,
) -> None:
    store = FileCheckpointStore(tmp_path)
    store.save("hot-state", b"old checkpoint")
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "writing"
        # Killed as soon as its temporary file exists, before it is complete or renamed.
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob(".hot-state.*.tmp")):
            assert time.monotonic() < deadline, "the writer never started its file"
            assert writer.poll() is None, "the writer finished before it was killed"
            time.sleep(0.001)
        writer.send_signal(signal.SIGKILL)  # this process object's PID
        writer.wait(timeout=10)
    assert writer.returncode == -signal.SIGKILL
    assert store.load("hot-state") == b"old checkpoint"


# -- what a loaded record must match ----------------------------------------------------------


def test_a_restart_loads_the_checkpoint_and_replays_only_the_tail(tmp_path: Path) -> None:
    entries = metrics(300)
    store = FileCheckpointStore(tmp_path)
    asyncio.run(caught_up(entries[:200], store))

    async def restart() -> tuple[HotState, CountingLog]:
        log = CountingLog(entries)
        hot = CheckpointedHotState(HotState(), checkpointer(store, log))
        await hot.runner(log, "live").catch_up()
        return hot.state, log

    state, log = asyncio.run(restart())
    assert log.read_entries == 100  # the tail only
    whole = HotState()
    whole.apply(LogBatch(0, 300, tuple(entries)))
    assert state.position == 300
    assert state.protocol_views == whole.protocol_views
    assert state.protocols == whole.protocols


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"version": hot_checkpoint.FORMAT_VERSION + 1}, id="newer format"),
        pytest.param({"version": hot_checkpoint.FORMAT_VERSION - 1}, id="older format"),
        pytest.param({"store_id": "store-b"}, id="another event store"),
        pytest.param({"kind": "anomaly_detector"}, id="another kind"),
    ],
)
def test_a_checkpoint_of_another_shape_or_store_is_discarded_and_the_log_replayed(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    entries = metrics(60)
    store = FileCheckpointStore(tmp_path)
    asyncio.run(caught_up(entries[:50], store))

    async def restart() -> tuple[HotState, CountingLog]:
        log = CountingLog(entries)
        hot = CheckpointedHotState(HotState(), checkpointer(store, log, **change))
        await hot.runner(log, "live").catch_up()
        return hot.state, log

    state, log = asyncio.run(restart())
    assert log.read_entries == 60  # the whole log
    whole = HotState()
    whole.apply(LogBatch(0, 60, tuple(entries)))
    assert state.protocol_views == whole.protocol_views


def test_an_older_body_shape_under_the_current_envelope_is_discarded(tmp_path: Path) -> None:
    entries = metrics(30)
    store = FileCheckpointStore(tmp_path)
    log = CountingLog(entries)
    writer = checkpointer(store, log)
    # A body that does not decode as this version's (e.g. a field the old shape lacked).
    store.save("hot-state", writer.envelope(20, b"\x92\x90\x90\x01"))

    async def restart() -> HotState:
        hot = CheckpointedHotState(HotState(), checkpointer(store, log))
        await hot.runner(log, "live").catch_up()
        return hot.state

    state = asyncio.run(restart())
    assert log.read_entries == 30
    assert state.position == 30


@pytest.mark.parametrize("garbage", [b"", b"\x00not msgpack", b"\x93\x01\x02\x03"])
def test_an_unreadable_checkpoint_is_discarded(tmp_path: Path, garbage: bytes) -> None:
    store = FileCheckpointStore(tmp_path)
    store.save("hot-state", garbage)
    log = CountingLog(metrics(10))
    assert asyncio.run(checkpointer(store, log).load()) is None


def test_a_checkpoint_beyond_the_logs_head_is_discarded(tmp_path: Path) -> None:
    # The event store was restored from an older backup: the checkpoint knows the future.
    store = FileCheckpointStore(tmp_path)
    asyncio.run(caught_up(metrics(80), store))
    shorter = CountingLog(metrics(50))
    assert asyncio.run(checkpointer(store, shorter).load()) is None


# -- when checkpoints are written ------------------------------------------------------------


def test_checkpoints_are_written_every_n_events_and_never_of_an_empty_state(
    tmp_path: Path,
) -> None:
    entries = metrics(100)
    store = FileCheckpointStore(tmp_path)

    async def run() -> list[int]:
        log = CountingLog(entries)
        writer = checkpointer(store, log, policy=CheckpointPolicy(every_events=30, every_seconds=0))
        hot = CheckpointedHotState(HotState(), writer)
        await hot.close()  # nothing applied: nothing written
        assert store.load("hot-state") is None
        positions = []
        for after in range(0, 100, 10):
            await hot.apply(LogBatch(after, after + 10, tuple(entries[after : after + 10])))
            await asyncio.sleep(0.05)  # the write runs in a thread
            loaded = await checkpointer(store, log).load()
            positions.append(0 if loaded is None else loaded.position)
        return positions

    positions = asyncio.run(run())
    assert positions[0] == 0
    assert positions[1] == 0
    assert positions[2] == 30
    assert positions[-1] >= 90
    assert positions == sorted(positions)


class ThreadRecordingStore(FileCheckpointStore):
    """A file store that notes the thread of every load and save."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.threads: list[str] = []

    def load(self, name: str) -> bytes | None:
        self.threads.append(threading.current_thread().name)
        return super().load(name)

    def save(self, name: str, data: bytes) -> None:
        self.threads.append(threading.current_thread().name)
        super().save(name, data)


def test_every_load_and_write_runs_on_the_one_checkpoint_thread(tmp_path: Path) -> None:
    """glibc gives each thread its own allocator arena: writes spread over the default
    executor's threads left each arena holding a checkpoint's worth of freed memory (serve's
    RSS grew ~25 MB a checkpoint in the one-hour soak). One thread reuses its own."""
    entries = metrics(60)
    store = ThreadRecordingStore(tmp_path)

    async def run() -> None:
        log = CountingLog(entries)
        writer = checkpointer(store, log, policy=CheckpointPolicy(every_events=10, every_seconds=0))
        hot = CheckpointedHotState(HotState(), writer)
        await hot.restore()
        for after in range(0, 60, 10):
            # Other work keeps the default executor's threads busy meanwhile.
            busy = [asyncio.to_thread(time.sleep, 0.02) for _ in range(4)]
            await hot.apply(LogBatch(after, after + 10, tuple(entries[after : after + 10])))
            await asyncio.gather(*busy)
            await writer.flush()  # the write under way, done
            assert writer.saved_position == after + 10
        await hot.close()

    asyncio.run(run())
    assert len(store.threads) >= 6  # the load, then a write every 10 events
    assert {name.split("_")[0] for name in store.threads} == {"checkpoint"}


def test_the_anomaly_follower_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    entries = metrics(400)
    store = FileCheckpointStore(tmp_path)
    settings = DetectorSettings(window=5, warmup=3, threshold=3.0)
    positions = InMemoryPositionStore()
    recorded: list[Detection] = []

    async def record(detections: Sequence[Detection]) -> int:
        recorded.extend(detections)
        return len(detections)

    def follower(log: CountingLog) -> AnomalyFollower:
        return AnomalyFollower(
            log,
            positions,
            record,
            settings,
            checkpointer=Checkpointer(
                store,
                "anomalies",
                kind="anomaly_detector",
                version=1,
                store_id="store-a",
                head=log.head,
                policy=CheckpointPolicy(every_events=0, every_seconds=0),
            ),
        )

    async def first() -> None:
        detector = follower(CountingLog(entries[:300]))
        await detector.runner().catch_up()
        await detector.close()
        # The position store got ahead of the checkpoint (e.g. a crash after a later save).
        await positions.save("anomalies", 350)

    asyncio.run(first())
    assert store.load("anomalies") is not None

    async def restart() -> tuple[CountingLog, AnomalyFollower]:
        log = CountingLog(entries)
        detector = follower(log)
        await detector.runner().catch_up()
        return log, detector

    log, resumed = asyncio.run(restart())
    # 300..350 folded without recording, 350..400 detected: never the whole log again.
    assert log.read_entries == 100
    fresh = follower(CountingLog(entries))
    fresh.checkpointer = None
    asyncio.run(fresh.start())
    assert fresh.detector.dump() != {}
    whole = AnomalyFollower(CountingLog(entries), InMemoryPositionStore(), record, settings)
    asyncio.run(whole.runner().catch_up())
    assert resumed.detector.dump() == whole.detector.dump()
