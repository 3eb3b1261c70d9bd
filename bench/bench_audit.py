"""The audit trail's cost on the ingest hot path: REST ingest on a server without the audit
trail (a checkout before it) and on one with it, in the same run.

    python bench/bench_audit.py --baseline-cli /path/to/main/.venv/bin/defi-realtime
        [--requests 1000] [--concurrency 16] [--rounds 5] [--items 10]

Two ``defi-realtime serve`` processes on the embedded stores (each its own DATA_DIR):
``baseline`` runs ``--baseline-cli`` (a checkout without the audit trail), ``audited`` this
interpreter's ``defi-realtime``. Each gets one key (``keys create``, from its own CLI). The
load generator is this process: ``--concurrency`` keep-alive HTTP/1.1 connections on
127.0.0.1 (raw asyncio streams), ``--requests`` ``POST /v2/ingest`` per server per round,
each a batch of ``--items`` new observations (a protocol per connection, a new timestamp
per request: every request records events in the main log, and on ``audited`` one audit
record). Rounds alternate the servers' order; the first is a warm-up. Reported: medians
over rounds of each server's CPU per request (from /proc), throughput, p50/p99 latency, and
the ratios against ``baseline`` from the same rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _common
from _common import (
    HOST,
    cli_command,
    create_key,
    embedded_env,
    free_port,
    machine,
    percentile,
    send_requests,
)

T0 = 1_764_000_000.0  # 2025-11-24: inside the accepted range of observation times


def _request(key: str, connection: int, number: int, items: int) -> bytes:
    observed_at = T0 + number
    body = json.dumps(
        {
            "observations": [
                {
                    "protocol": f"bench-audit-{connection}-{item}",
                    "metric": "tvl",
                    "chain": "total",
                    "value": 1e6 + number,
                    "observed_at": observed_at,
                    "name": f"Bench Audit {connection}-{item}",
                }
                for item in range(items)
            ]
        }
    ).encode()
    head = (
        f"POST /v2/ingest HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Server:
    def __init__(self, name: str, cli: list[str], data_dir: Path, log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        env = {**embedded_env(), "DATA_DIR": str(data_dir), "LOG_LEVEL": "warning"}
        env["RATE_LIMITS"] = "off"  # the audit trail's cost alone
        self.key = create_key(env, "--tier", "enterprise", cli=cli)
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [*cli, "serve", "--port", str(self.port)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.sent = 0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)

    async def load(self, args: argparse.Namespace) -> tuple[float, list[float], dict[int, int]]:
        share = args.requests // args.concurrency
        batches = [
            [
                _request(self.key, connection, self.sent + number, args.items)
                for number in range(share)
            ]
            for connection in range(args.concurrency)
        ]
        self.sent += share
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        started = time.perf_counter()
        await asyncio.gather(
            *(send_requests(self.port, batch, latencies, statuses) for batch in batches)
        )
        return len(latencies) / (time.perf_counter() - started), latencies, statuses


def _wait_healthy(server: Server) -> None:
    import http.client

    deadline = time.monotonic() + _common.STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited early")
        connection = http.client.HTTPConnection(HOST, server.port, timeout=2)
        try:
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not healthy")


async def _rounds(servers: list[Server], args: argparse.Namespace) -> None:
    print(machine())
    print(
        f"POST /v2/ingest, {args.items} new observations a request, {args.requests} requests "
        f"per server per round over {args.concurrency} connections, {args.rounds} rounds "
        "(after a warm-up round)"
    )
    figures: dict[str, dict[str, list[float]]] = {
        server.name: {"cpu": [], "rate": [], "p50": [], "p99": []} for server in servers
    }
    for round_number in range(args.rounds + 1):
        order = servers if round_number % 2 else list(reversed(servers))
        for server in order:
            cpu_before = server.cpu_seconds()
            rate, latencies, statuses = await server.load(args)
            cpu_used = server.cpu_seconds() - cpu_before
            if set(statuses) != {200}:
                raise RuntimeError(f"{server.name}: answers other than 200: {statuses}")
            if round_number == 0:
                continue
            ordered = sorted(latencies)
            mine = figures[server.name]
            mine["cpu"].append(cpu_used / len(latencies) * 1e6)
            mine["rate"].append(rate)
            mine["p50"].append(percentile(ordered, 50) * 1000)
            mine["p99"].append(percentile(ordered, 99) * 1000)
    base = {name: statistics.median(values) for name, values in figures["baseline"].items()}
    print()
    print(
        "| server | server CPU µs/request | vs baseline | requests/s | vs baseline | p50 ms "
        "| p99 ms | p99 added ms | rounds' requests/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, values in figures.items():
        median = {what: statistics.median(series) for what, series in values.items()}
        print(
            f"| {name} | {median['cpu']:,.0f} | {median['cpu'] / base['cpu'] - 1:+.1%} | "
            f"{median['rate']:,.0f} | {median['rate'] / base['rate'] - 1:+.1%} | "
            f"{median['p50']:.2f} | {median['p99']:.2f} | {median['p99'] - base['p99']:+.2f} | "
            + ", ".join(f"{rate:,.0f}" for rate in values["rate"])
            + " |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-cli", required=True, help="defi-realtime without auditing")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--items", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        servers: list[Server] = []
        try:
            for name, cli in (("baseline", [args.baseline_cli]), ("audited", cli_command())):
                server = Server(name, cli, Path(tmp) / name, Path(tmp) / f"{name}.log")
                servers.append(server)
                _wait_healthy(server)
            asyncio.run(_rounds(servers, args))
        finally:
            for server in servers:
                server.stop()


if __name__ == "__main__":
    main()
