"""The Prometheus rules and the Grafana dashboard in deploy/: valid, unit-tested, and naming
only metrics a running node exposes (so they cannot drift from the code)."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from tests.e2e.conftest import start_server
from tests.services import require_tool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "defi-realtime.json"
RULE_TESTS = Path(__file__).with_name("alerts_test.yml")
ALERTS = {
    "WebSocketConnectionFailures",
    "HttpLatencyHigh",
    "AlertDeliveryFailures",
    "RedisMemoryHigh",
    "ProjectionStalled",
    "ReconciliationDrift",
}
# Series of other exporters the rules and the dashboard may use.
FOREIGN_PREFIXES = ("redis_",)  # oliver006/redis_exporter
METRIC_NAME = re.compile(r"\b(?:dr|process|python|redis)_[a-zA-Z0-9_]+\b")
TIMEOUT = 60


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_the_rules_are_valid() -> None:
    run = _promtool("check", "rules", str(RULES))
    assert run.returncode == 0, run.stdout + run.stderr
    names = {rule["alert"] for group in _rule_groups() for rule in group["rules"]}
    assert names == ALERTS


def test_each_alert_fires_above_its_threshold_and_not_below() -> None:
    # The unit tests name the alerts with a case above, at and below each threshold.
    run = _promtool("test", "rules", str(RULE_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS


def test_the_example_scrape_config_is_valid() -> None:
    run = _promtool("check", "config", str(CONFIG))
    assert run.returncode == 0, run.stdout + run.stderr


def _rule_groups() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    groups: list[dict[str, object]] = document["groups"]
    return groups


def _expressions() -> Iterator[str]:
    for group in _rule_groups():
        rules = group["rules"]
        assert isinstance(rules, list)
        yield from (str(rule["expr"]) for rule in rules)
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        yield from (target["expr"] for target in panel["targets"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield variable["definition"]


def _exposed(exposition: str) -> set[str]:
    """The sample names /metrics can show, from its TYPE lines (a labelled metric with no
    sample yet still has one)."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


def test_the_rules_and_the_dashboard_use_only_metrics_a_node_exposes(tmp_path: Path) -> None:
    used = {name for expr in _expressions() for name in METRIC_NAME.findall(expr)}
    ours = {name for name in used if not name.startswith(FOREIGN_PREFIXES)}
    assert len(ours) >= 20, sorted(ours)  # the dashboard covers the node's metrics
    with start_server(tmp_path) as server:
        exposition = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    missing = ours - _exposed(exposition)
    assert not missing, f"not exposed by /metrics: {sorted(missing)}"
