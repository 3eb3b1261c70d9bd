"""A collector probe for ``bench/bench_gc_pause.py``, loaded into the server it starts.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the bench puts this
directory on the server's ``PYTHONPATH`` and names a file in ``GC_PROBE_FILE``. Nothing
happens without that variable, so other processes that inherit the path are untouched.

* Every collection of generation 2 (a full collection) is timed with ``gc.callbacks`` and
  appended to the file as a JSON line (``{"pid", "generation", "ms", "collected"}``).
* ``SIGUSR2`` writes a census (tracked objects, and the 25 most frequent types among them),
  then runs ``GC_PROBE_COLLECTIONS`` (default 3) full collections, each timed as above:
  the pause a full collection would hold the event loop for, since the handler runs on the
  main thread between two bytecodes, as the loop's own collections do.
* With ``GC_PROBE_GARBAGE=1`` the census first runs untimed collections with
  ``gc.DEBUG_SAVEALL`` and writes the types of the cyclic garbage they found (what reference
  counting could not free since the last full collection: the cycles the node makes): one
  as the node's next full collection would, then one after ``gc.unfreeze()``, which finds
  the cycles that died while frozen (what only a rescan frees).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import time

_FILE = os.environ.get("GC_PROBE_FILE")


def _write(record: dict[str, object]) -> None:
    if _FILE is None:
        return
    with open(_FILE, "a", encoding="utf-8") as out:
        out.write(json.dumps({"pid": os.getpid(), **record}) + "\n")


_started = [0.0, 0.0]
_untimed = [False]  # the garbage census's own collections are not pauses to report


def _on_collection(phase: str, info: dict[str, int]) -> None:
    if info["generation"] != 2 or _untimed[0]:
        return
    if phase == "start":
        _started[:] = time.perf_counter(), time.thread_time()
        return
    pause = (time.perf_counter() - _started[0]) * 1_000
    # CPU time of the collection too: on a shared box the wall time includes waiting for a core.
    cpu = (time.thread_time() - _started[1]) * 1_000
    _write(
        {
            "generation": 2,
            "ms": round(pause, 2),
            "cpu_ms": round(cpu, 2),
            "collected": info["collected"],
        }
    )


def _census(_signum: int, _frame: object) -> None:
    objects = gc.get_objects()
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    _write(
        {
            "tracked": len(objects),
            "frozen": gc.get_freeze_count(),
            "blocks": sys.getallocatedblocks(),
            "types": types.most_common(40),
        }
    )
    if os.environ.get("GC_PROBE_OWNERS") == "1":
        try:
            _owners(objects)
        except Exception as error:  # the census goes on; the failure is written
            _write({"owners_failed": repr(error)})
    del objects
    if os.environ.get("GC_PROBE_GARBAGE") == "1":
        _garbage()
    for _ in range(int(os.environ.get("GC_PROBE_COLLECTIONS", "3"))):
        gc.collect()
    _write({"census_done": True})


def _name(o: object) -> str:
    return f"{type(o).__module__}.{type(o).__qualname__}"


def _owners(objects: list[object]) -> None:
    """Which tracked objects hold the tracked dicts, lists and tuples (by the holder's type),
    and a sample of each kind's keys or items: what a census by type cannot tell apart."""
    wanted = {id(o): o for o in objects if type(o) in (dict, list, tuple)}
    owners: collections.Counter[str] = collections.Counter()
    for holder in objects:
        for ref in gc.get_referents(holder):
            held = wanted.get(id(ref))
            if held is not None:
                owners[f"{_name(held)} in {_name(holder)}"] += 1
    # Dicts apart by their keys' shape (the first two keys), lists and tuples by length.
    shapes: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for o in wanted.values():
        if isinstance(o, dict):
            first = [k if isinstance(k, str) else type(k).__name__ for k in list(o)[:2]]
            shape = f"dict {first} of {type(next(iter(o.values()), None)).__name__}"
        else:
            shape = f"{_name(o)} of {min(len(o), 3)}{'+' if len(o) > 3 else ''}"
        shapes[shape] += 1
        if shape not in samples:
            try:
                samples[shape] = repr(list(o.items())[:2] if isinstance(o, dict) else o[:3])[:160]
            except Exception as error:  # a repr that fails names its error
                samples[shape] = f"(repr failed: {error!r})"[:160]
    top = shapes.most_common(12)
    _write({"owners": owners.most_common(30), "samples": [(s, n, samples[s]) for s, n in top]})


def _saved_garbage() -> tuple[int, list[tuple[str, int]]]:
    """One collection with ``gc.DEBUG_SAVEALL``: how many cyclic garbage objects it found, and
    their most frequent types; then they are freed."""
    flags = gc.get_debug()
    gc.set_debug(flags | gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(flags)
    garbage = list(gc.garbage)
    gc.garbage.clear()
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in garbage)
    del garbage
    gc.collect()  # the saved cycles, now unreachable, are freed
    return sum(types.values()), types.most_common(30)


def _garbage() -> None:
    """The cyclic garbage a full collection would free now, then (``gc.unfreeze()`` first)
    what it would not: cycles that died after they were frozen, which only a rescan frees
    (the node's collector hook freezes what lives again at the end of the collection)."""
    _untimed[0] = True
    # The node's own hooks (its refreezer) would freeze the saved garbage at the end of the
    # first collection: out of gc.callbacks meanwhile, and what lives is frozen again after.
    hooks = [hook for hook in gc.callbacks if hook is not _on_collection]
    for hook in hooks:
        gc.callbacks.remove(hook)
    try:
        count, types = _saved_garbage()
        gc.unfreeze()
        frozen_count, frozen_types = _saved_garbage()
        gc.freeze()
        _write(
            {
                "garbage": count,
                "garbage_types": types,
                "frozen_garbage": frozen_count,
                "frozen_garbage_types": frozen_types,
            }
        )
    finally:
        gc.callbacks.extend(hooks)
        _untimed[0] = False


if _FILE is not None:
    gc.callbacks.append(_on_collection)
    signal.signal(signal.SIGUSR2, _census)
