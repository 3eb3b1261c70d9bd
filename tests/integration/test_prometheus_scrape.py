"""A real Prometheus (Debian's ``prometheus`` package) scrapes a real ``serve --workers 2``
node and evaluates deploy/prometheus/alerts.yml over what it scraped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml
from websockets.sync.client import connect

from tests.e2e.served import serve_process
from tests.integration.cluster import free_port
from tests.services import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_NAMES = [
    rule["alert"]
    for group in yaml.safe_load(RULES.read_text())["groups"]
    for rule in group["rules"]
]
JOB = "defi-realtime"
START_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def prometheus(work_dir: Path, target: str) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping ``target`` every second with the
    project's rules, its storage in ``work_dir``; stopped by its PID. Yields its URL."""
    binary = require_tool("prometheus")
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    # JSON is YAML: no quoting rules to get wrong for the paths.
    config.write_text(
        json.dumps(
            {
                # A scrape may take a while on a busy CI box: the timeout is the interval.
                "global": {
                    "scrape_interval": "2s",
                    "scrape_timeout": "2s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
            }
        )
    )
    log_path = work_dir / "prometheus.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200,
            START_TIMEOUT,
            lambda: f"prometheus not ready:\n{log_path.read_text(errors='replace')[-4000:]}",
            alive=lambda: popen.poll() is None,
        )
        yield url
    finally:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(popen.pid, signal.SIGKILL)
                popen.wait(timeout=STOP_TIMEOUT)


def _wait(
    done: Callable[[], bool],
    timeout: float,
    why: Callable[[], str],
    alive: Callable[[], bool] = lambda: True,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise AssertionError(why())
        with contextlib.suppress(httpx.TransportError):
            if done():
                return
        if time.monotonic() > deadline:
            raise AssertionError(why())
        time.sleep(0.25)


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _targets(url: str) -> list[dict[str, Any]]:
    """Prometheus' view of its targets (health, last error, scrape duration)."""
    answer = httpx.get(f"{url}/api/v1/targets", timeout=5).json()
    targets: list[dict[str, Any]] = answer["data"]["activeTargets"]
    return targets


def _value(url: str, expr: str) -> float | None:
    result = _query(url, expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_a_running_node_and_evaluates_the_rules(tmp_path: Path) -> None:
    env = {"METRICS_INTERVAL": "0.5", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc")}
    with serve_process(tmp_path / "node", "--workers", "2", env=env) as node:
        for _ in range(5):
            assert httpx.get(f"{node.base_url}/health", timeout=5).status_code == 200
        with connect(f"ws://127.0.0.1:{node.port}/v2/realtime", open_timeout=10) as socket:
            socket.send('{"type":"ping"}')
            assert json.loads(socket.recv(timeout=10))["type"] == "pong"
        with prometheus(tmp_path / "prometheus", f"127.0.0.1:{node.port}") as url:

            def scraped(expr: str, at_least: float) -> None:
                _wait(
                    lambda: (_value(url, expr) or 0.0) >= at_least,
                    SCRAPE_TIMEOUT,
                    lambda: f"{expr}: {_query(url, expr)}",
                )

            _wait(
                lambda: (_value(url, f'up{{job="{JOB}"}}') or 0.0) == 1.0,
                SCRAPE_TIMEOUT,
                lambda: f"no successful scrape: {_targets(url)}",
            )
            # The new metrics, as Prometheus stored them.
            scraped(
                f'sum(dr_http_request_duration_seconds_count{{job="{JOB}",route="/health",'
                'method="GET",status_class="2xx"})',
                5.0,
            )
            scraped(f'sum(dr_websocket_handshakes_total{{job="{JOB}",result="accepted"}})', 1.0)
            scraped(f'sum(dr_websocket_frames_sent_total{{job="{JOB}"}})', 1.0)
            scraped(f'count(process_resident_memory_bytes{{job="{JOB}"}})', 2.0)  # two workers
            lag = _query(url, f'dr_follower_lag_positions{{job="{JOB}"}}')
            assert lag, "no follower lag scraped"
            assert all(float(series["value"][1]) >= 0 for series in lag)
            assert _value(url, f'sum(dr_websocket_connections{{job="{JOB}"}})') is not None

            # The rules load and evaluate over the scraped series without errors.
            def rules_evaluated() -> bool:
                answer = httpx.get(f"{url}/api/v1/rules", timeout=5).json()
                rules = [rule for group in answer["data"]["groups"] for rule in group["rules"]]
                return len(rules) == len(RULE_NAMES) and all(
                    rule["health"] == "ok" and rule.get("lastEvaluation", "").startswith("2")
                    for rule in rules
                )

            _wait(
                rules_evaluated,
                SCRAPE_TIMEOUT,
                lambda: httpx.get(f"{url}/api/v1/rules", timeout=5).text[:4000],
            )
