"""The cost of knowing which batch of a commit group recorded which event (issue 13).

    python bench/bench_ingest_groups.py [--groups 20] [--batches 50] [--items 20] [--source DIR]

``DefiRealtime.ingest`` on groups of ``--batches`` REST-sized batches (``--items``
observations each, on 100 shared protocols: the batches' events interleave), as the writer
commits concurrent requests, into a fresh SQLite store; then one-batch groups of the same
total size. Prints the median wall and CPU milliseconds per group. ``--source DIR``: import
``defi_realtime`` from another checkout's ``src`` (a baseline: ``git archive main``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args()
    if args.source is not None:  # the package from another checkout, ahead of this one
        package = types.ModuleType("defi_realtime")
        package.__path__ = [str(args.source.resolve())]
        sys.modules["defi_realtime"] = package
    from defi_realtime.application.app import DefiRealtime
    from defi_realtime.application.ingest import build_batch

    def batch(group: int, index: int, size: int) -> object:
        at = 1_700_000_000.0 + group
        return build_batch(
            [
                {
                    "protocol": f"bench-{(index * size + i) % 100}",
                    "name": f"Bench {(index * size + i) % 100}",
                    "chain": f"chain-{index}-{i}",
                    "value": float(group * 1_000 + i),
                    "observed_at": at,
                }
                for i in range(size)
            ]
        )

    for label, batches, items in (
        (f"{args.batches} batches x {args.items}", args.batches, args.items),
        (f"1 batch x {args.batches * args.items}", 1, args.batches * args.items),
    ):
        with tempfile.TemporaryDirectory() as directory:
            app = DefiRealtime(
                env={
                    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": str(Path(directory) / "events.db"),
                }
            )
            times, cpu = [], []
            try:
                for group in range(args.groups):
                    work = [batch(group, index, items) for index in range(batches)]
                    started, used = time.perf_counter(), time.process_time()
                    app.ingest(work)  # type: ignore[arg-type]
                    times.append(time.perf_counter() - started)
                    cpu.append(time.process_time() - used)
            finally:
                app.close()
        print(
            f"{label:>24}: {statistics.median(times) * 1000:8.1f} ms per group, "
            f"{statistics.median(cpu) * 1000:8.1f} ms CPU (medians)"
        )


if __name__ == "__main__":
    main()
