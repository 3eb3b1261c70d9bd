"""A node sets the cyclic collector's thresholds while it runs (ADR 0012) and freezes what
lives at ready (ADR 0044)."""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from pydantic import ValidationError
from websockets.sync.client import connect

from defi_realtime.entrypoints.node import Refreezer
from defi_realtime.entrypoints.settings import Settings

from .conftest import obs, start_server

T = TypeVar("T")


def test_the_default_makes_full_collections_rare() -> None:
    gen0, gen1, gen2 = Settings().collector_thresholds
    assert (gen0, gen1) == (700, 10)  # young collections as Python's default
    assert gen2 >= 100 * 10  # a full collection at most every ~7M net allocations


@pytest.mark.parametrize("value", ["700,10", "700,10,0", "a,b,c", "700,10,10,10", "-1,10,10"])
def test_bad_thresholds_are_refused_with_a_clear_error(value: str) -> None:
    with pytest.raises(ValidationError, match="three positive integers"):
        Settings(GC_THRESHOLDS=value)


def test_the_node_sets_the_thresholds_while_it_runs_and_restores_them(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before != (700, 10, 777)
    with start_server(tmp_path / "data", gc_thresholds=" 700, 10,777") as server:
        assert server.settings.collector_thresholds == (700, 10, 777)
        assert gc.get_threshold() == (700, 10, 777)
    assert gc.get_threshold() == before


def test_the_node_freezes_what_lives_at_ready_and_unfreezes_on_exit(tmp_path: Path) -> None:
    assert Settings.model_fields["gc_freeze"].default is True  # (the suite turns it off)
    assert gc.get_freeze_count() == 0
    with start_server(tmp_path / "data", gc_freeze=True):
        # Everything alive at ready (this process's too: the server runs in a thread here)
        # is out of the collector's generations.
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("refreeze", [False, True])
def test_with_refreeze_a_full_collection_freezes_what_it_left_alive(
    tmp_path: Path, refreeze: bool
) -> None:
    with start_server(tmp_path / "data", gc_freeze=True, gc_refreeze=refreeze):
        frozen = gc.get_freeze_count()
        alive = [[n] for n in range(5_000)]  # tracked objects made after the node was ready
        gc.collect()
        grown = gc.get_freeze_count() - frozen
        # Without it nothing is added (a frozen object may die meanwhile: reference
        # counting frees frozen objects too).
        assert grown >= len(alive) if refreeze else grown <= 0
    assert gc.get_freeze_count() == 0


class _Cyclic:
    """An object in a reference cycle with itself (only the collector frees it)."""

    def __init__(self) -> None:
        self.me = self


def test_refreeze_is_on_by_default_with_a_rescan_on_growth() -> None:
    assert Settings.model_fields["gc_refreeze"].default is True
    assert Settings.model_fields["gc_rescan_growth"].default > 0
    assert Settings.model_fields["gc_rescan_every"].default == 0  # ADR 0058


def test_cyclic_garbage_frozen_while_alive_waits_for_the_next_rescan() -> None:
    """The risk of GC_REFREEZE, bounded (ADR 0054): an object frozen while alive that then
    dies in a cycle is not freed by the next full collections, but by the rescan."""
    refreezer = Refreezer(rescan_every=3)
    gc.collect()
    gc.callbacks.append(refreezer)
    try:
        cyclic = _Cyclic()
        gone = weakref.ref(cyclic)
        gc.collect()  # the 1st full collection: alive, frozen
        assert gc.get_freeze_count() > 0
        del cyclic
        gc.collect()  # the 2nd: frozen, not scanned
        assert gone() is not None
        gc.collect()  # the 3rd unfreezes first: reclaimed
        assert gone() is None
        assert refreezer.full_collections == 3
        assert gc.get_freeze_count() > 0  # what lives is frozen again
    finally:
        gc.callbacks.remove(refreezer)
        gc.unfreeze()


def _grown(growth: float, make: Callable[[], T]) -> list[T]:
    """``make()``'s objects, enough to grow the interpreter's allocated blocks by
    ``growth`` (a fraction)."""
    target = sys.getallocatedblocks() * (1 + growth)
    made: list[T] = []
    while sys.getallocatedblocks() < target:
        made += [make() for _ in range(1_000)]
    return made


def _frozen_garbage(growth: float) -> list[weakref.ref[_Cyclic]]:
    """Cycles, enough to grow the allocated blocks by ``growth``, frozen while alive, then
    dead: what only a rescan reclaims."""
    cycles = _grown(growth, _Cyclic)
    gc.collect()  # alive at the end of a full collection: frozen by the hook
    gone = [weakref.ref(cyclic) for cyclic in cycles]
    del cycles
    return gone


@contextlib.contextmanager
def _hooked(refreezer: Callable[[], Refreezer]) -> Iterator[Refreezer]:
    """The process's objects frozen as a node's at ready, then ``refreezer()`` hooked in,
    with the automatic collector off: only the test's own collections run the hook."""
    enabled = gc.isenabled()
    gc.disable()
    gc.collect()
    gc.freeze()
    hook = refreezer()
    gc.callbacks.append(hook)
    try:
        yield hook
    finally:
        gc.callbacks.remove(hook)
        gc.unfreeze()
        if enabled:
            gc.enable()


def test_frozen_garbage_beyond_the_growth_bound_is_reclaimed_by_a_rescan() -> None:
    """ADR 0058: no periodic rescan; a full collection scans everything after one that
    ended with the memory grown by more than ``rescan_growth`` since the last such scan."""
    with _hooked(lambda: Refreezer(rescan_every=0, rescan_growth=0.25)) as refreezer:
        baseline = sys.getallocatedblocks()
        assert refreezer.baseline == pytest.approx(baseline, rel=0.01)  # the freeze at ready
        small = _frozen_garbage(0.10)  # under the bound
        gc.collect()
        gc.collect()
        assert refreezer.rescans == 0
        assert not refreezer.due
        assert all(ref() is not None for ref in small)  # frozen, not scanned
        large = _frozen_garbage(0.20)  # ~+32 % in all: over it
        assert refreezer.due  # seen at the end of the collection that froze it
        assert refreezer.rescans == 0
        gc.collect()  # unfreezes first and scans everything
        assert refreezer.rescans == 1
        assert all(ref() is None for ref in small + large)
        # What lived is frozen again; the memory it holds is the new baseline.
        assert gc.get_freeze_count() > 0
        assert refreezer.baseline == pytest.approx(sys.getallocatedblocks(), rel=0.01)
        for _ in range(3):
            gc.collect()
        assert refreezer.rescans == 1


def test_what_grows_in_the_warmup_sets_the_mark_and_schedules_no_rescan() -> None:
    """ADR 0059: a node that fills its state after ready grows far beyond the bound, and all
    of it lives. Full collections in the warm-up, and the first after it, set the mark;
    growth beyond it is tested as before."""
    now = [0.0]

    def refreezer() -> Refreezer:
        return Refreezer(0, rescan_growth=0.25, warmup=60.0, clock=lambda: now[0])

    with _hooked(refreezer) as hook:
        state = _grown(0.60, list)  # alive: a node's state filling
        gc.collect()
        assert (hook.due, hook.rescans) == (False, 0)
        assert hook.baseline == pytest.approx(sys.getallocatedblocks(), rel=0.01)
        state += _grown(0.40, list)
        now[0] = 61.0
        gc.collect()  # the first after the warm-up: the mark, still
        assert (hook.due, hook.rescans, hook.warming) == (False, 0, False)
        garbage = _frozen_garbage(0.30)  # beyond the mark: as ADR 0058
        assert hook.due
        gc.collect()
        assert hook.rescans == 1
        assert all(ref() is None for ref in garbage)
        assert len(state) > 0


def test_the_node_passes_its_warmup(tmp_path: Path) -> None:
    assert Settings.model_fields["gc_rescan_warmup"].default == 1800.0
    with start_server(tmp_path / "data", gc_freeze=True, gc_rescan_warmup=120.0):
        (refreezer,) = [hook for hook in gc.callbacks if isinstance(hook, Refreezer)]
        assert refreezer.warming
        assert refreezer.warm_at - time.monotonic() == pytest.approx(120.0, abs=15.0)


def test_the_growth_check_does_not_walk_the_frozen_objects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pause stays the scan of what is new: ``gc.get_freeze_count()`` walks every
    frozen object (~30 ms at 300,000), so the hook must never call it."""
    calls = [0]
    real = gc.get_freeze_count

    def counted() -> int:
        calls[0] += 1
        return real()

    open_sockets = [0]
    with _hooked(
        lambda: Refreezer(0, sockets=lambda: open_sockets[0], burst=100, rescan_growth=0.25)
    ):
        monkeypatch.setattr(gc, "get_freeze_count", counted)
        _frozen_garbage(0.30)
        open_sockets[0] = 1_000
        gc.collect(1)  # a burst freeze
        gc.collect()  # a rescan
        gc.collect()
    assert calls[0] == 0


def test_connections_a_burst_freeze_adds_are_not_growth() -> None:
    """A burst of 10,000 sockets grows the memory far beyond the bound; they are alive,
    and a rescan for them would be the very pause the freeze avoids."""
    open_sockets = [0]

    def refreezer() -> Refreezer:
        return Refreezer(
            rescan_every=0, sockets=lambda: open_sockets[0], burst=100, rescan_growth=0.25
        )

    with _hooked(refreezer) as hook:
        frozen, baseline = gc.get_freeze_count(), sys.getallocatedblocks()
        held = [[n] for n in range(baseline)]  # what the sockets opened made
        assert sys.getallocatedblocks() > 1.5 * baseline
        open_sockets[0] = 10_000
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + len(held)  # the burst, frozen
        gc.collect()
        gc.collect()
        assert hook.rescans == 0
        assert not hook.due
        # Once they close, reference counting frees them: the memory and the mark fall.
        del held
        open_sockets[0] = 0
        gc.collect()
        gc.collect()
        assert hook.rescans == 0
        assert hook.baseline <= baseline * 1.05


def test_a_burst_of_sockets_is_frozen_at_the_next_young_collection() -> None:
    """ADR 0057: sockets opened in a burst are frozen at the end of a generation-1
    collection, never scanned by a full one; a smaller rise waits for the full collection."""
    open_sockets = [0]
    refreezer = Refreezer(rescan_every=0, sockets=lambda: open_sockets[0], burst=100)
    enabled = gc.isenabled()
    gc.disable()  # only the collections below run the hook
    gc.collect()
    gc.callbacks.append(refreezer)
    try:
        frozen = gc.get_freeze_count()
        held = [[n] for n in range(5_000)]  # what the sockets opened made
        open_sockets[0] = 99
        gc.collect(1)
        assert gc.get_freeze_count() == frozen  # fewer than a burst: nothing frozen
        open_sockets[0] = 100
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + len(held)
        assert not any(o is held for o in gc.get_objects())  # out of every scan
        assert refreezer.full_collections == 0
        # Sockets closed lower the mark: the next burst counts from there.
        open_sockets[0] = 10
        gc.collect(1)
        frozen = gc.get_freeze_count()
        more = [[n] for n in range(1_000)]
        open_sockets[0] = 110
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + len(more)
    finally:
        gc.callbacks.remove(refreezer)
        gc.unfreeze()
        if enabled:
            gc.enable()


def test_the_node_counts_its_open_sockets_for_the_burst_freeze(tmp_path: Path) -> None:
    with start_server(tmp_path / "data", gc_freeze=True, gc_refreeze=True) as server:
        (refreezer,) = [hook for hook in gc.callbacks if isinstance(hook, Refreezer)]
        assert refreezer.sockets is not None
        assert refreezer.sockets() == 0
        with connect(server.ws_url, additional_headers=server.headers, open_timeout=5):
            deadline = time.monotonic() + 10
            while refreezer.sockets() != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert refreezer.sockets() == 1
    assert not any(isinstance(hook, Refreezer) for hook in gc.callbacks)


def test_clients_that_close_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    """ADR 0059 rests on it: what a connection makes is freed by reference counting when it
    closes, never left to the cyclic collector, where a freeze (ADR 0054, 0057) would keep
    it until a rescan. The automatic collector is off while clients come and go, so a cycle
    they left is still there for the one collection below, which saves what it finds."""
    t0 = 1_765_000_000.0
    enabled = gc.isenabled()
    left: collections.Counter[str] = collections.Counter()
    with (
        start_server(tmp_path / "data") as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=10) as http,
    ):
        hub = server.app.state.node.hub

        def ingest(value: float, at: float) -> None:
            body = {"observations": [obs("aave-v3", value, at, name="Aave V3")]}
            assert http.post("/v2/ingest", json=body).status_code == 200

        ingest(1e9, t0)
        gc.collect()
        gc.disable()
        try:
            for round_ in range(1, 4):
                with contextlib.ExitStack() as opened:
                    clients = [
                        opened.enter_context(connect(server.ws_url, open_timeout=5))
                        for _ in range(20)
                    ]
                    for ws in clients:
                        ws.send(json.dumps({"type": "subscribe", "channel": "protocols",
                                            "params": {"protocolIds": ["aave-v3"]}}))  # fmt: skip
                        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
                    ingest(1e9 + round_, t0 + round_)
                    for ws in clients:
                        assert json.loads(ws.recv(timeout=5))["type"] == "update"
            deadline = time.monotonic() + 10
            while hub.connections and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not hub.connections
            time.sleep(0.2)  # the server's side of the last close handshakes ends
            flags = gc.get_debug()
            gc.set_debug(flags | gc.DEBUG_SAVEALL)
            try:
                gc.collect()
            finally:
                gc.set_debug(flags)
            left.update(
                f"{type(o).__module__}.{type(o).__qualname__}"
                for o in gc.garbage
                if type(o).__module__.startswith(("defi_realtime", "uvicorn", "starlette"))
            )
            gc.garbage.clear()
        finally:
            if enabled:
                gc.enable()
    assert not left, f"cyclic garbage the clients left: {left.most_common(10)}"
