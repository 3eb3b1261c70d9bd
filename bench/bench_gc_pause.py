"""The longest full-collection pause of a node holding 10,000 WebSocket clients.

    python bench/bench_gc_pause.py [--clients 10000] [--procs 4] [--rate 1000]
        [--warmup 60] [--collections 3] [--garbage] [--owners]

One run on 127.0.0.1; every process it starts is stopped by its PID in a ``finally``.
A fresh ``DATA_DIR``; ``defi-realtime serve`` starts with ``bench/gc_probe`` on its
``PYTHONPATH`` (a ``sitecustomize`` that times every full collection with ``gc.callbacks``
and, on ``SIGUSR2``, counts the tracked objects by type and runs full collections). Every
protocol of the first DeFiLlama snapshot is listed, then observations at ``--rate``/s over
all of them for ``--warmup`` s (each protocol's state, views and aggregate are built and
replaced many times, as in a running node), then ``--clients`` sockets from
``bench/ws_loadgen.py`` subscribe to 5 of the 200 largest each (as
``bench_ws_scale.py``). Then the probe's census and ``--collections`` full collections,
timed: the report gives the tracked objects (the node's own, before the clients connect,
and with them) and each pause, with the longest; then ``--warmup`` s more of observations
and the same again (what a later full collection scans), and once the clients have closed.
Bounded: well under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cli_command, embedded_env, free_port
from bench_ws_scale import (
    LoadGens,
    ingest_loop,
    list_all,
    load_protocols,
    log,
    parse_within,
    process,
    raise_fd_limit,
    rss_kb,
    wait_http,
    write_greetings,
)

HERE = Path(__file__).resolve().parent
LIMITS = {"clients": (0, 12_000), "procs": (1, 8), "rate": (1, 5_000), "warmup": (1, 300)}
LIMITS |= {"collections": (1, 10)}
GARBAGE_FIELDS = ("garbage", "garbage_types", "frozen_garbage", "frozen_garbage_types")
OWNER_FIELDS = ("owners", "samples")


def census(pid: int, probe: Path, timeout: float = 120) -> dict[str, Any]:
    """Signal the probe and read what it wrote: the census and the pauses it timed."""
    start = len(probe.read_text().splitlines()) if probe.exists() else 0
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in probe.read_text().splitlines()[start:]]
        ours = [x for x in lines if x["pid"] == pid]
        if any(x.get("census_done") for x in ours):
            counted = next(x for x in ours if "tracked" in x)
            garbage = next((x for x in ours if "garbage" in x), None)
            owners = next((x for x in ours if "owners" in x), None)
            pauses = [x["ms"] for x in ours if x.get("generation") == 2]
            collected = [x["collected"] for x in ours if x.get("generation") == 2]
            cpu = [x["cpu_ms"] for x in ours if x.get("generation") == 2]
            return {
                "tracked": counted["tracked"],
                "frozen": counted["frozen"],
                "blocks": counted["blocks"],
                "types": counted["types"],
                "pauses_ms": pauses,
                "max_ms": max(pauses),
                "cpu_ms": cpu,
                "collected": collected,
                **({} if garbage is None else {k: garbage[k] for k in GARBAGE_FIELDS}),
                **({} if owners is None else {k: owners[k] for k in OWNER_FIELDS}),
            }
        time.sleep(0.2)
    raise RuntimeError("the probe did not answer")


def run(args: argparse.Namespace) -> dict[str, Any]:
    protocols = load_protocols()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-gc-pause-"))
    probe = data_dir / "probe.jsonl"
    greetings = data_dir / "subscriptions.json"
    write_greetings(greetings, args.clients, protocols[:200])
    env = embedded_env()
    env.update(DATA_DIR=str(data_dir / "data"), POLL_INTERVAL="0.05", WS_IDLE_TIMEOUT="600")
    env["RATE_LIMITS"] = "off"  # the bench is the only client
    results: dict[str, Any] = {"protocols": len(protocols), "clients": args.clients}
    try:
        key = subprocess.run(
            [*cli_command(), "keys", "create", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()
        port = free_port()
        server_env = {
            **env,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(HERE / "gc_probe"), env.get("PYTHONPATH")])
            ),
            "GC_PROBE_FILE": str(probe),
            "GC_PROBE_COLLECTIONS": str(args.collections),
            "GC_PROBE_GARBAGE": "1" if args.garbage else "0",
            "GC_PROBE_OWNERS": "1" if args.owners else "0",
        }
        command = [*cli_command(), "serve", "--port", str(port), "--log-level", "warning"]
        with process(command, server_env) as server:
            wait_http(port, server)
            results["at_start"] = census(server.pid, probe)
            log(f"at start: {results['at_start']['tracked']} tracked")
            list_all(port, key, protocols)
            slugs = [p["slug"] for p in protocols]
            results["warmup"] = ingest_loop(port, key, slugs, args.rate, args.warmup)
            time.sleep(2)
            results["node_alone"] = census(server.pid, probe)
            results["node_alone"]["per_protocol"] = round(
                (results["node_alone"]["tracked"] - results["at_start"]["tracked"])
                / len(protocols),
                1,
            )
            results["node_alone"]["rss_mb"] = round(rss_kb(server.pid) / 1024, 1)
            log(f"node alone: {results['node_alone']}")
            if args.clients:
                gens = LoadGens(port, args.clients, args.procs, [], greetings, seconds=300)
                try:
                    results["connected"] = gens.wait_ready()
                    time.sleep(2)
                    results["with_clients"] = census(server.pid, probe)
                    results["with_clients"]["rss_mb"] = round(rss_kb(server.pid) / 1024, 1)
                    log(f"with clients: {results['with_clients']}")
                    # What the next full collection scans after more load: with
                    # GC_REFREEZE, only what was made (and lives) since the last one.
                    results["more_load"] = ingest_loop(port, key, slugs, args.rate, args.warmup)
                    results["after_more_load"] = census(server.pid, probe)
                    log(f"after more load: {results['after_more_load']}")
                finally:
                    gens.stop()
                # What closing every socket leaves to the collector: cycles a later freeze
                # of live connections would leak (``collected`` of the first collection).
                time.sleep(3)
                results["clients_gone"] = census(server.pid, probe)
                log(f"clients gone: {results['clients_gone']}")
            server.check_alive()
        # Full collections the node ran on its own during the run (thresholds: GC_THRESHOLDS).
        lines = [json.loads(x) for x in probe.read_text().splitlines()]
        results["probe_lines"] = len(lines)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--warmup", type=float, default=60)
    parser.add_argument("--collections", type=int, default=3)
    parser.add_argument(
        "--garbage",
        action="store_true",
        help="before each census's timed collections, count the cyclic garbage by type "
        "(untimed collections with gc.DEBUG_SAVEALL: one as the node's next, one after "
        "gc.unfreeze() for what was frozen while alive); what lives is frozen after it, so "
        "the timed collections that follow find nothing new (use a run without it for pauses)",
    )
    parser.add_argument(
        "--owners",
        action="store_true",
        help="with each census, count the tracked dicts, lists and tuples by the type of "
        "the tracked object holding them, with a sample of each (untimed)",
    )
    args = parse_within(parser, LIMITS)
    raise_fd_limit()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
