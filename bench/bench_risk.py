"""Latency of the risk list and of one protocol's analytics over the real data, through HTTP.

    python bench/bench_risk.py [--repeat 30] [--data-dir DIR]

Ingests the shared snapshot and history files (~6,700 protocols, 38 daily histories) into a
fresh embedded store with ``defi-realtime ingest`` (or serves ``--data-dir``, a store that
already holds them), starts ``defi-realtime serve`` on a free port and times, ``--repeat``
times each after one warm-up, in the same run:

* baseline: ``GET /v2/protocols?limit=100`` (the hot projection's page, no score);
* ``GET /v2/analytics/risk?limit=100``: every protocol scored (now), the top 100;
* the same ``?asOf=`` the latest capture (views and closes from the history read model);
* ``GET /v2/analytics/risk?category=Lending&limit=100`` (the filters first);
* ``GET /v2/protocols/aave-v3/analytics`` and ``?asOf=``.

Prints p50/p95/p99 in ms and the ratio of each median to the baseline's. The server is
stopped by its PID; skips if the shared data is absent.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import CliProcess, cli_command, embedded_env, free_port, machine, summary

DATA = Path(__file__).resolve().parents[2] / "shared/data/defillama"
FILES = ("protocol-snapshots.jsonl.gz", "tvl-history.jsonl.gz")
LATEST_CAPTURE = "2025-12-19T20:17:23Z"


def _get(port: int, path: str) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
    return elapsed * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if not all((DATA / name).exists() for name in FILES):
        print(f"skipped: the shared data is not in {DATA}")
        return
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-risk-") as scratch:
        data_dir = args.data_dir or Path(scratch) / "data"
        env = {**embedded_env(), "DATA_DIR": str(data_dir)}
        if args.data_dir is None:
            started = time.perf_counter()
            for name in FILES:
                subprocess.run(
                    [*cli_command(), "ingest", str(DATA / name)],
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=900,
                )
            print(f"ingested the shared files in {time.perf_counter() - started:.1f} s")
        port = free_port()
        server = CliProcess(
            "serve",
            ["serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            log_path=Path(scratch) / "serve.log",
        )
        try:
            # The node folds the whole log before it answers (~80,000 events: a minute or
            # more), then its projections follow: wait until they have caught up.
            deadline = time.monotonic() + 600
            while not _caught_up(port):
                if server.popen.poll() is not None:
                    raise RuntimeError(f"serve exited:\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not caught up within 600 s:\n{server.log_tail()}")
                time.sleep(0.5)
            cases = {
                "baseline: /v2/protocols?limit=100": "/v2/protocols?limit=100",
                "/v2/analytics/risk?limit=100": "/v2/analytics/risk?limit=100",
                "/v2/analytics/risk?limit=100&asOf=latest capture": (
                    f"/v2/analytics/risk?limit=100&asOf={LATEST_CAPTURE}"
                ),
                "/v2/analytics/risk?category=Lending&limit=100": (
                    "/v2/analytics/risk?category=Lending&limit=100"
                ),
                "/v2/protocols/aave-v3/analytics": "/v2/protocols/aave-v3/analytics",
                "/v2/protocols/aave-v3/analytics?asOf=latest capture": (
                    f"/v2/protocols/aave-v3/analytics?asOf={LATEST_CAPTURE}"
                ),
            }
            results: dict[str, dict[str, float]] = {}
            for name, path in cases.items():
                _get(port, path)  # warm-up
                results[name] = summary([_get(port, path) for _ in range(args.repeat)])
        finally:
            server.stop()
    baseline = results["baseline: /v2/protocols?limit=100"]["p50"]
    print(f"\n{'request':<55} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p50/baseline':>13}")
    for name, found in results.items():
        print(
            f"{name:<55} {found['p50']:8.1f} {found['p95']:8.1f} {found['p99']:8.1f} "
            f"{found['p50'] / baseline:12.1f}x"
        )


def _caught_up(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/health")
        health = json.loads(connection.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()
    return bool(health["history_position"] == health["hot_position"] == health["log_head"])


if __name__ == "__main__":
    sys.exit(main())
