"""``serve --workers 2``: /metrics counts what every worker did, whichever worker answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from tests.e2e.served import metric_samples, serve_process
from tests.integration.cluster import CLI, START_TIMEOUT, Process, free_port

ROUTE = "/asyncapi.json"
COUNTED = ("dr_http_requests_total", frozenset({("route", ROUTE), ("status", "200")}))
ROUNDS = 20
PER_ROUND = 16


def _ask(base_url: str) -> int:
    # A connection per request: uvicorn's workers share the listening socket, so each
    # request may land on either worker.
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        return client.get(ROUTE).status_code


def _per_worker(directory: Path) -> dict[int, float]:
    """``COUNTED`` of each worker alone, read from its own counter file."""
    counts: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        alone = directory.parent / f"alone-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(alone))  # type: ignore[no-untyped-call]
        samples = metric_samples(generate_latest(registry).decode())
        counts[int(path.stem.split("_")[1])] = samples.get(COUNTED, 0.0)
        shutil.rmtree(alone)
    return counts


def test_a_counter_incremented_through_both_workers_sums_on_metrics(tmp_path: Path) -> None:
    parent = tmp_path / "multiproc"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(parent), "METRICS_INTERVAL": "0.2"}
    with serve_process(tmp_path / "node", "--workers", "2", env=env) as node:
        # The fresh directory of this invocation, inside the one the environment names.
        (directory,) = parent.iterdir()
        sent = 0
        per_worker: dict[int, float] = {}
        with ThreadPoolExecutor(PER_ROUND) as pool:
            for _ in range(ROUNDS):  # bounded: until both workers have answered some
                statuses = list(pool.map(_ask, [node.base_url] * PER_ROUND))
                assert statuses == [200] * PER_ROUND
                sent += PER_ROUND
                per_worker = _per_worker(directory)
                if sum(1 for count in per_worker.values() if count) >= 2:
                    break
        assert sum(1 for count in per_worker.values() if count) == 2, per_worker
        # A request is counted once its answer has gone out: the last ones may land a
        # moment after the client read them (bounded wait).
        deadline = time.monotonic() + 10
        while sum(per_worker.values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            per_worker = _per_worker(directory)
        assert sum(per_worker.values()) == sent

        with httpx.Client(base_url=node.base_url, timeout=10.0) as client:
            text = client.get("/metrics").text
            samples = metric_samples(text)
            assert samples[COUNTED] == sent
            latency_count = (
                "dr_http_request_duration_seconds_count",
                frozenset({("route", ROUTE), ("method", "GET"), ("status_class", "2xx")}),
            )
            assert samples[latency_count] == sent
            # Every worker writes its own process metrics (pid label), whichever answers.
            deadline = time.monotonic() + 10
            while True:
                pids = {
                    dict(labels)["pid"]
                    for name, labels in metric_samples(client.get("/metrics").text)
                    if name == "process_resident_memory_bytes"
                }
                if len(pids) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(pids) == 2, pids
            assert "# TYPE process_cpu_seconds_total counter" in text
    # The invocation's directory goes with it.
    assert list(parent.iterdir()) == []


def test_a_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [*CLI, "worker", "alerts", "--metrics-port", str(port)],
            env={**os.environ, "DATA_DIR": str(tmp_path / "data"), "METRICS_INTERVAL": "0.2"},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    worker = Process(name="worker", popen=popen, log_path=log_path, port=port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        lag = ("dr_follower_lag_positions", frozenset({("follower", "alerts")}))
        samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        while lag not in samples:
            assert worker.alive(), worker.output()
            assert time.monotonic() < deadline, f"no alerts lag on /metrics:\n{worker.output()}"
            with contextlib.suppress(httpx.TransportError):
                samples = metric_samples(httpx.get(f"{worker.base_url}/metrics", timeout=2).text)
            time.sleep(0.1)
        assert samples[lag] == 0.0
        assert samples[("process_resident_memory_bytes", frozenset())] > 0
    finally:
        worker.stop()
    assert popen.returncode == 0, worker.output()


def test_one_worker_under_the_variable_gets_a_fresh_directory_removed_on_sigterm(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "multiproc"
    stale = parent / "an-earlier-run"
    stale.mkdir(parents=True)
    with serve_process(tmp_path / "node", env={"PROMETHEUS_MULTIPROC_DIR": str(parent)}) as node:
        (directory,) = [path for path in parent.iterdir() if path != stale]
        assert list(directory.glob("counter_*.db"))
        samples = metric_samples(httpx.get(f"{node.base_url}/metrics", timeout=10).text)
        assert [dict(labels) for name, labels in samples if name == "process_open_fds"] == [
            {"pid": str(next(iter(directory.glob("counter_*.db"))).stem.split("_")[1])}
        ]
    # Stopped with SIGTERM: its directory is gone, another run's is left alone.
    assert list(parent.iterdir()) == [stale]
