"""Backing up a PostgreSQL deployment and restoring it into a new database gives the same
answers (``deploy/backup-postgres.sh``, ``deploy/restore-postgres.sh``; docs/deployment.md).

A ``serve`` node on one deployment takes observations, prices and an alert rule that fires;
its answers are read, the node stopped and the database backed up with the script. The
backup holds the event store, the followers' positions and the delivery record, and no row
of the history read model (its tables are rebuilt), or, with ``WITH_READ_MODELS=true``, the
history rows too (then only the hot projection is rebuilt). A second deployment (a new, empty
database, another Redis prefix and exchange) gets the backup restored and its projections
rebuilt by the restore script; a node started on it answers exactly as the first one did,
and the first deployment's API key still works (keys are events too).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.adapters.sql_history import _FACT_TABLES
from defi_realtime.adapters.sql_schema import PROJECTION_TRACKING
from tests.integration.cluster import Stack, stack, wait_until

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(180),
]

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
T0 = 1_700_000_000
DAY = 86_400
EVENT_STORE = "defirealtime_events"
# Kept whole by the backup: the event store and what cannot be derived from it.
KEPT = {
    EVENT_STORE,
    "log_follower_positions",
    "delivery_attempts",
    "pending_notifications",
    "history_alembic_version",
    # The accounts' data keys (docs/adr/0042): without them the log's personal fields
    # cannot be read.
    "account_keys",
    "erased_subjects",
    # The audit log (docs/adr/0041) is not a fold of the event store: kept whole, with its
    # read model (a consistent copy; refilled from the audit log if emptied).
    "auditlog_events",
    "audit_records",
    # Aggregate snapshots (docs/adr/0045): folds of the events in the same dump.
    "defirealtime_snapshots",
    # How far raw detail was dropped (docs/adr/0047): a rebuild must not bring it back.
    "history_retention",
}
REBUILT = {table.name for table in (*_FACT_TABLES, PROJECTION_TRACKING)}


def observations() -> list[dict[str, Any]]:
    items = []
    for day in range(5):
        for slug, chain, base in (("lend-a", "Ethereum", 2e9), ("dex-b", "Arbitrum", 5e8)):
            for metric, factor in (("tvl", 1.0), ("volume_24h", 0.1)):
                items.append(
                    {
                        "protocol": slug,
                        "name": slug.title(),
                        "category": "Lending" if slug == "lend-a" else "Dexs",
                        "chains": [chain],
                        "metric": metric,
                        "chain": chain,
                        "value": base * factor * (1 + day / 10),
                        "observed_at": T0 + day * DAY,
                    }
                )
    return items


async def run_script(script: str, backup: Path, env: dict[str, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(DEPLOY / script),
        str(backup),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    except TimeoutError:
        process.kill()  # by this process object's PID
        await process.wait()
        raise
    assert process.returncode == 0, f"{script}: {stderr.decode()[-4000:]}{stdout.decode()}"


def script_env(deployment: Stack, name: str) -> dict[str, str]:
    env = deployment.env(name)
    env["DEFI_REALTIME"] = f"{sys.executable} -m defi_realtime.entrypoints.cli"
    return env


async def answers(base_url: str, key: str, rule_id: str) -> dict[str, Any]:
    """What the node says about everything the deployment was told."""
    keyed = {"X-API-Key": key}
    paths = [
        "/v2/protocols?sort=tvl&order=desc",
        "/v2/protocols/lend-a",
        "/v2/protocols/dex-b/metrics?metric=tvl",
        f"/v2/protocols/lend-a?asOf={T0 + 2 * DAY}",
        "/protocols",
        "/v2/chains",
        "/v2/historicalChainTvl",
        f"/prices/historical/{T0 + 1}/coingecko:ethereum",
        "/v2/alerts",
        f"/v2/alerts/{rule_id}",
        f"/v2/alerts/{rule_id}/history",
    ]
    found: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, headers=keyed) as client:
        for path in paths:
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            found[path] = response.json()
    return found


async def settled(deployment: Stack, base_url: str) -> dict[str, Any]:
    """``/health`` once every projection of the node reached the log head."""

    async def health() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
            body: dict[str, Any] = (await client.get("/health")).json()
            return body

    return dict(
        await wait_until(
            health,
            lambda body: (
                body["log_head"] > 0
                and body["hot_position"] == body["history_position"] == body["log_head"]
                and all(p["lag"] == 0 for p in body["projections"].values())
            ),
            20.0,
            "projections at the head",
        )
    )


def parent(table: str) -> str:
    """A weekly partition of the raw observations (docs/adr/0047) stands for its table."""
    return re.sub(r"_w\d{8}$", "", table)


def tables(deployment: Stack) -> set[str]:
    rows = deployment.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {parent(str(row[0])) for row in rows}


@pytest.mark.parametrize("with_read_models", [False, True], ids=["event-store", "everything"])
async def test_backup_and_restore_into_a_new_database_gives_the_same_answers(
    tmp_path: Path, with_read_models: bool
) -> None:
    backup = tmp_path / "defi-realtime.dump"
    async with stack(tmp_path / "source") as source:
        key = await source.create_key()
        node = await source.serve("source")
        keyed = {"X-API-Key": key}
        async with httpx.AsyncClient(base_url=node.base_url, timeout=10.0, headers=keyed) as http:
            # A rule needs a listed protocol: list lend-a (above the threshold) first.
            listed = await http.post(
                "/v2/ingest",
                json={
                    "observations": [{**observations()[0], "value": 2.5e9, "observed_at": T0 - DAY}]
                },
            )
            assert listed.status_code == 200, listed.text
            created = await http.post(
                "/v2/alerts",
                json={
                    "name": "lend-a below 2.1B",
                    "target": {"protocol": "lend-a", "chain": "Ethereum"},
                    "condition": {"kind": "threshold", "direction": "below", "value": 2.1e9},
                    "channels": [{"kind": "websocket"}],
                    "cooldown": 0,
                },
            )
            assert created.status_code == 200, created.text
            rule_id = created.json()["id"]
            prices = [
                {"token": "coingecko:ethereum", "price": 3000.0 + day, "observed_at": T0 + day}
                for day in range(3)
            ]
            ingested = await http.post(
                "/v2/ingest", json={"observations": observations(), "prices": prices}
            )
            assert ingested.status_code == 200, ingested.text
            # The rule fired on the first day (2.0e9) and resolved later (2.2e9 and up).
            await wait_until(
                lambda: http.get(f"/v2/alerts/{rule_id}/history"),
                lambda response: len(response.json()["transitions"]) == 2,
                15.0,
                "the rule fired and resolved",
            )
        health = await settled(source, node.base_url)
        before = await answers(node.base_url, key, rule_id)
        # The answers compared below carry the data (not empty pages or lists).
        assert before["/v2/protocols?sort=tvl&order=desc"]["total"] == 2
        assert len(before["/v2/chains"]) == 2
        assert len(before[f"/v2/alerts/{rule_id}/history"]["transitions"]) == 2
        assert before[f"/prices/historical/{T0 + 1}/coingecko:ethereum"]["coins"], before
        node.stop()
        assert set(tables(source)) == KEPT | REBUILT, "a table the backup does not know"

        env = script_env(source, "backup")
        env["WITH_READ_MODELS"] = "true" if with_read_models else "false"
        await run_script("backup-postgres.sh", backup, env)

    listing = (
        await asyncio.to_thread(
            subprocess.run,
            ["pg_restore", "--list", str(backup)],
            capture_output=True,
            text=True,
            check=True,
        )
    ).stdout
    with_rows = {
        parent(line.split()[-2]) for line in listing.splitlines() if " TABLE DATA public " in line
    }
    assert with_rows == (KEPT | REBUILT if with_read_models else KEPT), listing

    async with stack(tmp_path / "target") as target:
        assert tables(target) == set()
        env = script_env(target, "restore")
        # A backup with the history rows needs only the hot projection (Redis) rebuilt.
        env["REBUILD"] = "hot" if with_read_models else "all"
        await run_script("restore-postgres.sh", backup, env)
        assert target.history_position() == health["log_head"]
        node = await target.serve("restored")
        assert await settled(target, node.base_url) == {**health, "connections": 0}
        after = await answers(node.base_url, key, rule_id)
        for path, answer in before.items():
            assert after[path] == answer, path
