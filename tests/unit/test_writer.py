"""The writer thread outlives callers that go away (a cancelled request or collector)."""

from __future__ import annotations

import asyncio
import threading

from defi_realtime.application.ingest import build_batch
from defi_realtime.application.writer import IngestWriter
from tests.property.test_ws_resume import event_store
from tests.unit.test_telemetry import observation


def test_a_call_cancelled_while_queued_is_dropped_and_the_writer_goes_on() -> None:
    with event_store() as app:
        writer = IngestWriter(app)
        writer.start()
        try:
            busy, release = threading.Event(), threading.Event()
            ran: list[str] = []

            def block() -> str:
                busy.set()
                release.wait(10)
                return "first"

            first = writer.call_soon(block)
            assert busy.wait(10)
            queued = writer.call_soon(lambda: ran.append("cancelled") or "cancelled")
            assert queued.cancel()
            release.set()
            assert first.result(timeout=10) == "first"
            after = writer.submit(build_batch([observation("after", 1.0)]))
            assert after.result(timeout=10).accepted == 1
        finally:
            writer.stop()
    assert ran == []  # the cancelled call never ran


def test_an_ingest_cancelled_while_queued_commits_nothing_and_the_writer_goes_on() -> None:
    with event_store() as app:
        writer = IngestWriter(app)
        writer.start()
        try:
            busy, release = threading.Event(), threading.Event()
            first = writer.call_soon(lambda: (busy.set(), release.wait(10)))
            assert busy.wait(10)
            dropped = writer.submit(build_batch([observation("dropped", 1.0)]))
            kept = writer.submit(build_batch([observation("kept", 2.0)]))
            assert dropped.cancel()
            release.set()
            first.result(timeout=10)
            assert kept.result(timeout=10).accepted == 1
            assert writer.call_soon(lambda: app.get_protocol("kept")).result(timeout=10)
            missing = writer.call_soon(lambda: app.get_protocol("dropped"))
            assert missing.exception(timeout=10) is not None
        finally:
            writer.stop()


async def test_an_awaiting_task_cancelled_mid_call_does_not_kill_the_writer() -> None:
    with event_store() as app:
        writer = IngestWriter(app)
        writer.start()
        try:
            busy, release = threading.Event(), threading.Event()
            task = asyncio.create_task(writer.call(lambda: (busy.set(), release.wait(10))))
            queued = asyncio.create_task(writer.call(lambda: "never awaited"))
            await asyncio.to_thread(busy.wait, 10)
            queued.cancel()  # wrap_future cancels the queued concurrent future too
            task.cancel()  # this one is running: its result lands unseen
            release.set()
            still = await asyncio.wait_for(writer.call(lambda: "still writing"), 10)
            assert still == "still writing"
        finally:
            writer.stop()
