"""``deploy/compose.yaml``'s topology, run as processes against the real services.

Every service of the compose file that runs the defi-realtime image is started here with its
own command (``serve``, ``worker relay``, ...) and its own environment, as compose would
start it. What differs, and only because these are processes on one host instead of
containers on a network:

* a URL that names a compose service (``postgres``, ``redis``, ``rabbitmq``) points at the
  test's PostgreSQL / Redis / RabbitMQ on 127.0.0.1, in the ``Stack``'s own database, Redis
  key prefix and exchange (so nothing is shared with other tests);
* ``HOST``/``PORT``: each container listens on 0.0.0.0:8000; here each ``serve`` gets
  127.0.0.1 and a port of its own;
* ``DATA_DIR`` is one folder per service (a container's volume); ``POLL_INTERVAL`` and
  ``PGAPPNAME`` are the Stack's (fast polling, lock holders by name);
* ``ALLOW_PRIVATE_WEBHOOKS=true``, because the test's webhook receiver is on loopback.

Then the deployment is shown to work end to end: both API nodes answer ``/health``; an
observation posted to node 1 reaches a WebSocket client of node 2 (with its log position)
and node 2's REST answer; an alert rule created on node 1 fires through the workers (the
workers start first and hold the elected roles: the ``relay`` worker publishes, the
``projections`` worker applies the shared projections, the ``alerts`` worker records the
transition, the ``notifications`` worker, the only process that delivers with ``AMQP_URL``
set, sends the signed webhook) and node 2's client gets the alert frame.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from defi_realtime.entrypoints.roles import ROLES
from tests.deploy_compose import AppService, app_services, load_compose
from tests.integration.cluster import CLI, Process, Stack, free_port, lock_holder, stack, wait_until
from tests.webhook_receiver import WebhookReceiver

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(120),
]

# Which Stack URL stands for the compose service a setting's URL names.
BACKING_SERVICES = {"postgres": "database_url", "redis": "redis_url", "rabbitmq": "amqp_url"}
URL_SETTINGS = ("DATABASE_URL", "REDIS_URL", "AMQP_URL")
# Each lock a compose worker is elected on, and that worker (the role table).
# The compose file sets no EVM_CHAINS: the evm worker (chains, MEV) runs, but follows nothing.
UNCONFIGURED_WORKERS = {"evm"}
# Nor HISTORY_DETAIL_RETENTION_DAYS: the reconcile worker's retention loop keeps everything
# and stands for no election.
UNCONFIGURED_ROLES = {"retention"}
WORKER_LOCKS = {
    role.lock: role.worker
    for role in ROLES
    if role.worker is not None
    and role.lock is not None
    and role.worker not in UNCONFIGURED_WORKERS
    and role.name not in UNCONFIGURED_ROLES
}
SECRET = "whsec_deploy_topology"
SLUG = "deploy-lend"
T0 = 1_700_000_000
FRAME_TIMEOUT = 10.0
ALERT_TIMEOUT = 20.0
# Five worker processes importing the server at once take ~5 s on an idle 2-core box, far
# longer while other work loads it; the wait ends as soon as every lock is held.
STARTUP_TIMEOUT = 60.0


def process_environment(
    deployment: Stack, service: AppService, services: Mapping[str, Any], data_dir: Path
) -> dict[str, str]:
    """The compose service's environment, mapped onto this host (see the module docstring)."""
    env = deployment.env(service.name)
    for name, value in service.environment.items():
        if name in URL_SETTINGS:
            host = urlparse(value).hostname
            assert host in services, f"{service.name}: {name} names no compose service"
            value = getattr(deployment, BACKING_SERVICES[str(host)])
        env[name] = value
    env.update(
        {
            "HOST": "127.0.0.1",
            "DATA_DIR": str(data_dir),
            "REDIS_PREFIX": deployment.redis_prefix,
            "AMQP_EXCHANGE": deployment.exchange,
            "ALLOW_PRIVATE_WEBHOOKS": "true",
        }
    )
    return env


def start(deployment: Stack, service: AppService, services: Mapping[str, Any]) -> Process:
    """Start the service's command as a process of the Stack (stopped by its ``close``)."""
    data_dir = deployment.work_dir / "volumes" / service.name
    env = process_environment(deployment, service, services, data_dir)
    port = None
    command = list(service.command)
    if service.serves_http:
        port = free_port()
        env["PORT"] = str(port)
    elif "--metrics-port" in command:
        # Each container has its own network; on one host each worker gets its own port.
        port = free_port()
        command[command.index("--metrics-port") + 1] = str(port)
    log_path = deployment.work_dir / f"{service.name}.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [*CLI, *command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=deployment.work_dir,
        )
    process = Process(name=service.name, popen=popen, log_path=log_path, port=port)
    deployment.processes.append(process)
    return process


async def next_frame(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def subscribe(ws: ClientConnection, channel: str, params: dict[str, Any]) -> None:
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, "params": params}))
    frame = await next_frame(ws)
    assert (frame["type"], frame["channel"]) == ("subscribed", channel), frame


async def frame_of(
    ws: ClientConnection, wanted: str, timeout: float = FRAME_TIMEOUT
) -> dict[str, Any]:
    """The next frame of type ``wanted`` (frames of other types before it are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await next_frame(ws, max(deadline - loop.time(), 0.01))
        if frame["type"] == wanted:
            return frame


async def ingest(client: httpx.AsyncClient, key: str, value: float, at: float) -> int:
    observation = {
        "protocol": SLUG,
        "name": "Deploy Lend",
        "category": "Lending",
        "metric": "tvl",
        "chain": "total",
        "value": value,
        "observed_at": at,
    }
    response = await client.post(
        "/v2/ingest", json={"observations": [observation]}, headers={"X-API-Key": key}
    )
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 1, response.text
    position: int = response.json()["position"]
    return position


async def rest_tvl(client: httpx.AsyncClient) -> float | None:
    response = await client.get(f"/v2/protocols/{SLUG}")
    return response.json().get("tvl") if response.status_code == 200 else None


async def test_the_compose_topology_runs_as_processes(tmp_path: Path) -> None:
    document = load_compose()
    services = app_services(document)
    api_services = [service for service in services if service.serves_http]
    assert len(api_services) == 2, services

    async with stack(tmp_path / "stack") as deployment:
        key = await deployment.create_key()
        # The workers first, so that each holds its elected role (the API nodes, started
        # next, stand by for the same locks): what follows then goes through the workers.
        processes = {
            service.name: start(deployment, service, document["services"])
            for service in services
            if not service.serves_http
        }
        holders = WORKER_LOCKS
        assert set(holders.values()) | UNCONFIGURED_WORKERS == set(processes), processes
        for lock, worker in holders.items():
            await wait_until(
                lambda lock=lock: lock_holder(deployment, lock.key),
                lambda holder, worker=worker: holder == worker,
                STARTUP_TIMEOUT,
                f"{lock.name} held by the {worker} worker",
            )
        for service in api_services:
            processes[service.name] = start(deployment, service, document["services"])
        node_1, node_2 = (processes[service.name] for service in api_services)
        for node in (node_1, node_2):
            await deployment.wait_healthy(node)  # GET /health answers 200

        with WebhookReceiver() as receiver:
            async with (
                httpx.AsyncClient(base_url=node_1.base_url, timeout=10.0) as http_1,
                httpx.AsyncClient(base_url=node_2.base_url, timeout=10.0) as http_2,
                connect(node_2.ws_url, additional_headers={"X-API-Key": key}) as ws,
            ):
                await subscribe(ws, "protocols", {"protocolIds": [SLUG]})
                await subscribe(ws, "alerts", {})

                # An observation posted to node 1 reaches node 2's client and REST answer.
                first = await ingest(http_1, key, 2e9, T0)
                update = await frame_of(ws, "update")
                assert (update["position"], update["data"]["id"], update["data"]["value"]) == (
                    first,
                    SLUG,
                    2e9,
                ), update
                await wait_until(lambda: rest_tvl(http_2), lambda tvl: tvl == 2e9, 10.0, "REST")

                # An alert rule made on node 1 fires through the workers.
                created = await http_1.post(
                    "/v2/alerts",
                    json={
                        "name": "deploy drain",
                        "target": {"protocol": SLUG},
                        "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
                        "channels": [
                            {"kind": "webhook", "url": receiver.url, "secret": SECRET},
                            {"kind": "websocket"},
                        ],
                        "cooldown": 0,
                    },
                    headers={"X-API-Key": key},
                )
                assert created.status_code == 200, created.text
                rule_id = created.json()["id"]
                # The evaluator must know the rule before the drop arrives: it reads rules
                # from the log, so wait until node 2's history lists it.
                await wait_until(
                    lambda: http_2.get(f"/v2/alerts/{rule_id}", headers={"X-API-Key": key}),
                    lambda response: response.status_code == 200,
                    10.0,
                    "the rule on node 2",
                )
                second = await ingest(http_1, key, 5e8, T0 + 60)
                alert = await frame_of(ws, "alert", ALERT_TIMEOUT)
                assert (alert["alertId"], alert["condition"]) == (rule_id, "firing"), alert
                assert alert["position"] > second, alert

                delivered = await asyncio.to_thread(
                    receiver.wait_for_request,
                    lambda request: json.loads(request.body)["alertId"] == rule_id,
                    ALERT_TIMEOUT,
                )
                body = json.loads(delivered.body)
                assert (body["condition"], body["data"]["measure"]) == ("firing", 5e8), body
                signed = delivered.headers["x-signature-timestamp"].encode() + b"." + delivered.body
                expected = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(delivered.headers["x-signature"], expected)

                history = await wait_until(
                    lambda: http_2.get(f"/v2/alerts/{rule_id}/history", headers={"X-API-Key": key}),
                    lambda response: (
                        response.status_code == 200
                        and any(
                            attempt.get("status") == "delivered"
                            for attempt in response.json().get("deliveries", [])
                        )
                    ),
                    10.0,
                    "the delivery recorded",
                )
                assert history.json()["transitions"], history.text

        # Each worker serves /metrics where deploy/prometheus/prometheus.yml scrapes it.
        async with httpx.AsyncClient(timeout=10.0) as scraper:
            for name in set(holders.values()) | UNCONFIGURED_WORKERS:
                metrics = await scraper.get(f"http://127.0.0.1:{processes[name].port}/metrics")
                assert metrics.status_code == 200, (name, metrics.text)
                assert "# TYPE dr_" in metrics.text, name
        # The workers held their roles throughout.
        for lock, worker in holders.items():
            assert lock_holder(deployment, lock.key) == worker, lock.name
        for name, process in processes.items():
            assert process.alive(), f"{name} exited:\n{process.output()}"
            assert "Traceback" not in process.output(tail=1_000_000), process.output()
