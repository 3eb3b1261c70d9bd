"""WebSocket scale: 10k connections, ingest -> client latency, fan-out throughput.

    python bench/bench_ws_scale.py [--clients 10000] [--procs 4] [--rate 1000]
        [--seconds 20] [--fanout-clients 1000] [--skip-fanout] [--skip-scale]

Everything runs on 127.0.0.1; every process this script starts is stopped by its PID in a
``finally``; counts and durations are bounded (whole run well under 10 minutes).

1. **Connections held.** A fresh ``DATA_DIR``; ``defi-realtime serve`` (lean transport)
   starts; the 200 largest protocols of ``../shared/data/defillama/protocol-snapshots
   .jsonl.gz`` (first snapshot, by TVL; 200 synthetic names if the file is missing) are
   listed with one ingest. The server's RSS (``/proc/PID/status`` VmRSS) is read, then
   ``--procs`` load-generator processes (``bench/ws_loadgen.py``) open ``--clients``
   sockets, each subscribed to 5 of the 200 protocols; RSS again: the difference over
   the number of sockets is the memory per connection. The same is done for
   ``WS_TRANSPORT=asgi`` (uvicorn's WebSocket stack + Starlette) with fewer sockets.
2. **Ingest -> client latency.** With those sockets open, ``POST /v2/ingest`` at
   ``--rate`` observations/s (batches every 50 ms) for ``--seconds``; each observation's
   ``observed_at`` is ``time.time()`` when its POST starts, so every update frame's
   ``timestamp`` gives the latency at its arrival. Two mixes: observations spread over
   every protocol of the snapshot (the realistic one: most have no subscriber), and all
   of them on the 200 subscribed-to protocols (the worst case).
3. **Fan-out throughput.** ``bench/ws_fanout_servers.py`` in three modes (our hub + lean
   transport, a naive Starlette loop, python-socketio's broadcast), ``--fanout-clients``
   sockets each receiving every update; the update rate climbs until p99 > 100 ms (or
   fewer than 90% of the expected updates arrive); the best delivered updates/s at
   p99 < 100 ms is reported, all measured in this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
HERE = Path(__file__).resolve().parent
SNAPSHOTS = HERE.parent.parent / "shared" / "data" / "defillama" / "protocol-snapshots.jsonl.gz"
LIMITS = {"clients": (1, 12_000), "procs": (1, 8), "rate": (1, 5_000), "seconds": (1, 60)}
EXTERNAL_ENV = ("DATABASE_URL", "REDIS_URL", "AMQP_URL")
T0 = time.time() - 86_400


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def load_protocols() -> list[dict[str, Any]]:
    """The first snapshot's protocols, largest TVL first (synthetic if the file is absent)."""
    if not SNAPSHOTS.exists():
        return [
            {
                "slug": f"protocol-{n}",
                "name": f"Protocol {n}",
                "category": "Dexs",
                "tvl": 1e9 / (n + 1),
            }
            for n in range(2_000)
        ]
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    first: str | None = None
    with gzip.open(SNAPSHOTS, "rt") as file:
        for line in file:
            row = json.loads(line)
            first = first or row["captured_at"]
            if row["captured_at"] != first:
                break
            slug = slugify(row["name"])
            if slug in seen or not isinstance(row.get("tvl"), int | float) or row["tvl"] < 0:
                continue
            seen.add(slug)
            rows.append(
                {
                    "slug": slug,
                    "name": row["name"][:100],
                    "category": row.get("category") or "",
                    "tvl": float(row["tvl"]),
                }
            )
    rows.sort(key=lambda r: -r["tvl"])
    return rows


def percentiles(histogram: dict[int, int]) -> dict[str, float]:
    total = sum(histogram.values())
    out: dict[str, float] = {"n": float(total)}
    if not total:
        return {
            "n": 0,
            "p50": float("nan"),
            "p95": float("nan"),
            "p99": float("nan"),
            "max": float("nan"),
        }
    ordered = sorted(histogram.items())
    for label, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        rank, running = q * total, 0
        for bucket, count in ordered:
            running += count
            if running >= rank:
                out[label] = (bucket + 1) / 10.0  # ms (upper edge of a 0.1 ms bucket)
                break
    out["max"] = (ordered[-1][0] + 1) / 10.0
    return out


class LoadGens:
    """Several ``ws_loadgen.py`` processes, driven through their stdin/stdout."""

    def __init__(
        self, port: int, clients: int, procs: int, extra: list[str], greetings: Path | None
    ) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        for count in per:
            command = [
                sys.executable,
                str(HERE / "ws_loadgen.py"),
                "--port",
                str(port),
                "--clients",
                str(count),
                "--seconds",
                "400",
                *extra,
            ]
            if greetings is not None:
                command += ["--subscribe-json", str(greetings)]
            self.procs.append(
                subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )

    def wait_ready(self, timeout: float = 120) -> int:
        connected = 0
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            line = self._line(proc, deadline)
            connected += json.loads(line)["connected"]
        return connected

    @staticmethod
    def _line(proc: subprocess.Popen[str], deadline: float) -> str:
        assert proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(max(0.1, deadline - time.monotonic()))
        if not result or not result[0]:
            raise RuntimeError("a load generator did not answer in time")
        return result[0]

    def command(self, text: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(text + "\n")
            proc.stdin.flush()

    def report(self) -> dict[str, Any]:
        self.command("report")
        deadline = time.monotonic() + 60
        merged: dict[int, int] = {}
        frames = updates = open_ = 0
        closes: dict[str, int] = {}
        for proc in self.procs:
            report = json.loads(self._line(proc, deadline))
            frames += report["frames"]
            updates += report["updates"]
            open_ += report["open"]
            for bucket, count in report["histogram"].items():
                merged[int(bucket)] = merged.get(int(bucket), 0) + count
            for code, count in report["closes"].items():
                closes[code] = closes.get(code, 0) + count
        return {
            "frames": frames,
            "updates": updates,
            "open": open_,
            "closes": closes,
            "latency_ms": percentiles(merged),
        }

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stdin.write("quit\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], stdin: bool = False
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_http(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://{HOST}:{port}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("server did not start")


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
            return
        time.sleep(0.1)
    raise RuntimeError("server did not listen")


def cli() -> list[str]:
    script = Path(sys.executable).with_name("defi-realtime")
    return [str(script)] if script.exists() else [shutil.which("defi-realtime") or "defi-realtime"]


def ingest_loop(port: int, key: str, slugs: list[str], rate: int, seconds: float) -> dict[str, Any]:
    """POST ``rate`` observations/s in batches every 50 ms (open loop, bounded)."""
    per_batch = max(1, rate // 20)
    sent = 0
    late = 0
    start = time.monotonic()
    counter = 0
    with httpx.Client(
        base_url=f"http://{HOST}:{port}", headers={"X-API-Key": key}, timeout=10
    ) as client:
        tick = 0
        while time.monotonic() - start < seconds:
            due = start + tick * 0.05
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late += 1
            tick += 1
            now = time.time()
            items = []
            for _ in range(per_batch):
                counter += 1
                items.append(
                    {
                        "protocol": slugs[(counter * 7919) % len(slugs)],
                        "metric": "tvl",
                        "chain": "total",
                        "value": float(counter),
                        "observed_at": now,
                    }
                )
            response = client.post("/v2/ingest", json={"observations": items})
            response.raise_for_status()
            sent += per_batch
    elapsed = time.monotonic() - start
    return {
        "observations": sent,
        "seconds": round(elapsed, 1),
        "rate": round(sent / elapsed),
        "late_batches": late,
    }


def scale(args: argparse.Namespace) -> dict[str, Any]:
    protocols = load_protocols()
    top = protocols[:200]
    results: dict[str, Any] = {"protocols_total": len(protocols)}
    data_dir = Path(tempfile.mkdtemp(prefix="bench-ws-scale-"))
    greetings = data_dir / "subscriptions.json"
    subscriptions = []
    for n in range(args.clients):
        chosen = [top[(n * 5 + k * 37) % len(top)]["slug"] for k in range(5)]
        subscriptions.append(
            [{"type": "subscribe", "channel": "protocols", "params": {"protocolIds": chosen}}]
        )
    greetings.write_text(json.dumps(subscriptions))
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL_ENV}
    env.update(DATA_DIR=str(data_dir / "data"), POLL_INTERVAL="0.05", WS_IDLE_TIMEOUT="600")
    try:
        key = subprocess.run(
            [*cli(), "keys", "create", "--name", "bench"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for transport, clients in (("lean", args.clients), ("asgi", min(args.clients, 2_000))):
            port = free_port()
            env_t = {**env, "WS_TRANSPORT": transport}
            with process(
                [*cli(), "serve", "--port", str(port), "--log-level", "warning"], env_t
            ) as server:
                wait_http(port)
                listing = [
                    {
                        "protocol": p["slug"],
                        "metric": "tvl",
                        "chain": "total",
                        "value": p["tvl"],
                        "observed_at": T0,
                        "name": p["name"],
                        "category": p["category"] or "Unknown",
                    }
                    for p in protocols
                ]
                if transport == "lean":
                    with httpx.Client(
                        base_url=f"http://{HOST}:{port}", headers={"X-API-Key": key}, timeout=60
                    ) as client:
                        for i in range(0, len(listing), 1_000):
                            client.post(
                                "/v2/ingest",
                                json={"observations": listing[i : i + 1_000], "partial": True},
                            ).raise_for_status()
                time.sleep(2)
                before = rss_kb(server.pid)
                gens = LoadGens(
                    port, clients, args.procs if transport == "lean" else 1, [], greetings
                )
                try:
                    connected = gens.wait_ready()
                    time.sleep(2)
                    after = rss_kb(server.pid)
                    held = {
                        "transport": transport,
                        "connections": connected,
                        "rss_before_mb": round(before / 1024, 1),
                        "rss_after_mb": round(after / 1024, 1),
                        "kb_per_connection": round((after - before) / max(1, connected), 2),
                    }
                    log(f"held: {held}")
                    results[f"held_{transport}"] = held
                    if transport != "lean":
                        continue
                    slugs_all = [p["slug"] for p in protocols]
                    for mix, slugs in (
                        ("all protocols", slugs_all),
                        ("top 200 only", [p["slug"] for p in top]),
                    ):
                        gens.command("reset")
                        cpu0 = cpu_seconds(server.pid)
                        ingest = ingest_loop(port, key, slugs, args.rate, args.seconds)
                        time.sleep(1.0)
                        cpu = cpu_seconds(server.pid) - cpu0
                        report = gens.report()
                        entry = {
                            "mix": mix,
                            "ingest": ingest,
                            "server_cpu_s": round(cpu, 1),
                            "updates_received": report["updates"],
                            "updates_per_s": round(report["updates"] / (ingest["seconds"] + 1)),
                            "open": report["open"],
                            "latency_ms": report["latency_ms"],
                            "closes": report["closes"],
                        }
                        log(f"latency: {entry}")
                        results.setdefault("latency", []).append(entry)
                finally:
                    gens.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return results


def fanout(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    greeting = Path(tempfile.mkdtemp(prefix="bench-ws-fanout-")) / "subscribe.json"
    greeting.write_text(json.dumps([[{"type": "subscribe", "channel": "protocols"}]]))
    ladder = [5, 10, 20, 40, 80, 160, 320, 640, 1_280, 2_560, 5_120]
    modes = [
        ("naive", "plain", []),
        ("socketio", "socketio", []),
        ("hub", "ours", []),
        ("hub", "ours", ["--batch"]),
    ]
    try:
        for mode, flavor, extra in modes:
            name = mode + (" (batch=1)" if extra else "")
            port = free_port()
            with process(
                [
                    sys.executable,
                    str(HERE / "ws_fanout_servers.py"),
                    "--mode",
                    mode,
                    "--port",
                    str(port),
                ],
                dict(os.environ),
                stdin=True,
            ) as server:
                wait_port(port)
                gens = LoadGens(
                    port,
                    args.fanout_clients,
                    2,
                    ["--flavor", flavor, *extra],
                    greeting if flavor == "ours" else None,
                )
                steps = []
                try:
                    connected = gens.wait_ready()
                    for rate in ladder:
                        assert server.stdin is not None
                        server.stdin.write(f"rate {rate}\n")
                        server.stdin.flush()
                        time.sleep(1.0)
                        gens.command("reset")
                        cpu0 = cpu_seconds(server.pid)
                        time.sleep(args.fanout_seconds)
                        report = gens.report()
                        cpu = cpu_seconds(server.pid) - cpu0
                        expected = rate * connected * args.fanout_seconds
                        step = {
                            "rate": rate,
                            "delivered_per_s": round(report["updates"] / args.fanout_seconds),
                            "share": round(report["updates"] / expected, 3),
                            "p99_ms": report["latency_ms"]["p99"],
                            "p50_ms": report["latency_ms"]["p50"],
                            "server_cpu": round(cpu / args.fanout_seconds, 2),
                        }
                        steps.append(step)
                        log(f"fanout {name}: {step}")
                        if step["p99_ms"] > 100 or step["share"] < 0.9:
                            break
                    server.stdin.write("rate 0\n")  # type: ignore[union-attr]
                    server.stdin.flush()  # type: ignore[union-attr]
                finally:
                    gens.stop()
                ok = [s for s in steps if s["p99_ms"] <= 100 and s["share"] >= 0.9]
                results[name] = {
                    "connections": connected,
                    "steps": steps,
                    "best_delivered_per_s": max((s["delivered_per_s"] for s in ok), default=0),
                }
    finally:
        shutil.rmtree(greeting.parent, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--rate", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--fanout-clients", type=int, default=1_000)
    parser.add_argument("--fanout-seconds", type=float, default=4)
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    for name, (low, high) in LIMITS.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be within {low}..{high}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server
    started = time.monotonic()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "fd_limit": hard,
        },
    }
    if not args.skip_scale:
        out["scale"] = scale(args)
    if not args.skip_fanout:
        out["fanout"] = fanout(args)
    out["wall_seconds"] = round(time.monotonic() - started)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
