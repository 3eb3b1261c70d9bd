"""Durable subscriptions end to end: ``/v2/subscriptions`` and re-attaching over the
WebSocket, on the embedded adapters and on PostgreSQL + Redis + RabbitMQ (where a client
acknowledges on one node and re-attaches on another)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from defi_realtime.adapters.webhook_notifier import sign
from defi_realtime.application.app import DefiRealtime
from defi_realtime.client import DefiRealtimeClient
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import (
    SETTLE_TIMEOUT,
    LiveServer,
    assert_error,
    obs,
    production_settings,
    start_server,
    wait_for,
)
from tests.webhook_receiver import WebhookReceiver

T0 = 1_765_000_000.0
FRAME_TIMEOUT = 5.0
# Webhook subscriptions on loopback, retried and polled quickly.
FAST_WEBHOOKS = {
    "allow_private_webhooks": True,
    "notify_backoff_base": 0.05,
    "notify_backoff_max": 0.2,
    "subscription_webhook_interval": 0.05,
}


@dataclass
class Accounts:
    """Two owners' keys on one deployment (one node, or two sharing the services)."""

    nodes: list[LiveServer]
    alice: dict[str, str]
    bob: dict[str, str]


def _issue(settings: Settings, name: str) -> str:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = DefiRealtime(env=settings.event_store_env)
    try:
        return app.issue_api_key(name=name)
    finally:
        app.close()


@contextlib.contextmanager
def deployment(tmp_path: Path, backend: str, nodes: int = 1, **server: Any) -> Iterator[Accounts]:
    with contextlib.ExitStack() as stack:
        overrides: dict[str, Any] = {}
        if backend == "production":
            overrides = stack.enter_context(production_settings())
        settings = Settings(data_dir=tmp_path / "node0", **overrides)
        alice, bob = _issue(settings, "alice"), _issue(settings, "bob")
        servers = [
            stack.enter_context(
                start_server(tmp_path / f"node{n}", api_key=alice, **overrides, **server)
            )
            for n in range(nodes)
        ]
        yield Accounts(servers, {"X-API-Key": alice}, {"X-API-Key": bob})


@pytest.fixture(params=["embedded", "production"])
def accounts(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Accounts]:
    with deployment(tmp_path, request.param) as deployed:
        yield deployed


def ingest(http: httpx.Client, headers: dict[str, str], *items: dict[str, Any]) -> int:
    response = http.post("/v2/ingest", json={"observations": list(items)}, headers=headers)
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


@contextlib.asynccontextmanager
async def socket(server: LiveServer, headers: dict[str, str]) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(server.ws_url, additional_headers=headers, open_timeout=5)
    try:
        yield ws
    finally:
        await ws.close()


async def frames_until(
    ws: ClientConnection, done: Any, timeout: float = FRAME_TIMEOUT
) -> list[dict[str, Any]]:
    """Frames received until one satisfies ``done`` (included)."""
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            received.append(frame)
            if done(frame):
                return received


def updates(frames: list[dict[str, Any]]) -> list[tuple[str, float]]:
    return [(f["data"]["id"], f["data"]["value"]) for f in frames if f["type"] == "update"]


def test_subscriptions_are_owned_named_and_deleted(accounts: Accounts) -> None:
    [server] = accounts.nodes
    alice, bob = accounts.alice, accounts.bob
    with httpx.Client(base_url=server.base_url, timeout=10.0) as http:
        body = {"name": "aave", "channel": "protocols", "params": {"protocolIds": ["aave"]}}
        created = http.post("/v2/subscriptions", json=body, headers=alice)
        assert created.status_code == 200, created.text
        subscription = created.json()
        assert {k: subscription[k] for k in ("name", "channel", "params", "delivery")} == {
            "name": "aave",
            "channel": "protocols",
            "params": {"protocolIds": ["aave"]},
            "delivery": "websocket",
        }
        path = f"/v2/subscriptions/{subscription['id']}"
        assert http.get(path, headers=alice).json() == subscription
        listed = http.get("/v2/subscriptions", headers=alice).json()
        assert (listed["total"], listed["subscriptions"]) == (1, [subscription])

        # Bob never sees it: not listed, not found, cannot delete it; his names are his.
        assert http.get("/v2/subscriptions", headers=bob).json() == {
            "subscriptions": [],
            "total": 0,
        }
        assert_error(http.get(path, headers=bob), 404, "subscription_not_found")
        assert_error(http.delete(path, headers=bob), 404, "subscription_not_found")
        assert http.post("/v2/subscriptions", json=body, headers=bob).status_code == 200

        # One name per owner; bad channels and filters refused as on the socket.
        taken = assert_error(
            http.post("/v2/subscriptions", json=body, headers=alice), 409, "subscription_exists"
        )
        assert taken["details"] == {"field": "name", "id": subscription["id"]}
        for bad in (
            {"channel": "tvl"},
            {"channel": "protocols", "params": {"slugs": ["aave"]}},
            {"channel": "protocols", "params": {"minTvl": -1}},
            {"channel": "protocols", "position": -1},
            {"channel": "protocols", "extra": 1},
            {"channel": "protocols", "name": "\u0084 control"},  # the domain refuses it
            {"channel": "protocols", "name": "   "},
        ):
            response = http.post("/v2/subscriptions", json=bad, headers=alice)
            assert response.status_code == 400, (bad, response.text)
        assert_error(http.post("/v2/subscriptions", json=body), 401, "unauthorized")
        assert_error(
            http.get("/v2/subscriptions/nope", headers=alice), 404, "subscription_not_found"
        )

        deleted = http.delete(path, headers=alice)
        assert deleted.json() == {"id": subscription["id"], "state": "closed"}
        assert_error(http.get(path, headers=alice), 404, "subscription_not_found")
        assert http.get("/v2/subscriptions", headers=alice).json()["total"] == 0
        # The name is free again.
        assert http.post("/v2/subscriptions", json=body, headers=alice).status_code == 200


async def attach(ws: ClientConnection, subscription_id: str) -> list[dict[str, Any]]:
    await ws.send(json.dumps({"type": "attach", "subscription": subscription_id}))
    return await frames_until(ws, lambda f: f["type"] in ("subscribed", "error"))


async def aingest(http: httpx.AsyncClient, headers: dict[str, str], *items: Any) -> None:
    response = await http.post("/v2/ingest", json={"observations": list(items)}, headers=headers)
    assert response.status_code == 200, response.text


async def asettle(http: httpx.AsyncClient) -> None:
    """Wait until the node has followed the log to its head (bounded)."""
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while True:
            health = (await http.get("/health")).json()
            if health["node_position"] == health["log_head"]:
                return
            await asyncio.sleep(0.01)


async def reattach_flow(accounts: Accounts) -> None:
    first, last = accounts.nodes[0], accounts.nodes[-1]
    alice, bob = accounts.alice, accounts.bob
    async with httpx.AsyncClient(base_url=first.base_url, timeout=10.0) as http:
        await aingest(http, alice, obs("aave", 1.0, T0, name="Aave"), obs("uni", 1, T0, name="U"))
        created = (
            await http.post(
                "/v2/subscriptions",
                json={"channel": "protocols", "params": {"protocolIds": ["aave"]}},
                headers=alice,
            )
        ).json()
        sid = created["id"]
        # After it was created: what it gets on its first attach, though nobody listened.
        await aingest(http, alice, obs("aave", 2.0, T0 + 1), obs("uni", 2.0, T0 + 1))
        await aingest(http, alice, obs("aave", 3.0, T0 + 2))
        await asettle(http)

        async with socket(first, bob) as ws:
            [refused] = await attach(ws, sid)
            assert (refused["type"], refused["code"]) == ("error", "unknown_subscription")

        async with socket(first, alice) as ws:
            [subscribed] = await attach(ws, sid)
            assert subscribed["acknowledged"] == created["position"]
            got = await frames_until(ws, lambda f: f.get("data", {}).get("value") == 3.0)
            assert updates(got) == [("aave", 2.0), ("aave", 3.0)]
            first_update = got[0]["position"]
            await ws.send(
                json.dumps({"type": "ack", "subscriptionId": sid, "position": first_update})
            )
            acked = (await frames_until(ws, lambda f: f["type"] == "acked"))[-1]
            assert acked["position"] == first_update

        # Stored: any node resumes after it (the second node, on the production services).
        view = (await http.get(f"/v2/subscriptions/{sid}", headers=alice)).json()
        assert view["position"] == first_update
        await aingest(http, alice, obs("aave", 4.0, T0 + 3))

    async with httpx.AsyncClient(base_url=last.base_url, timeout=10.0) as http:
        await asettle(http)
    async with socket(last, alice) as ws:
        [subscribed] = await attach(ws, sid)
        assert subscribed["acknowledged"] == first_update
        got = await frames_until(ws, lambda f: f.get("data", {}).get("value") == 4.0)
        # The unacknowledged update comes again; the acknowledged one does not.
        assert updates(got) == [("aave", 3.0), ("aave", 4.0)]


async def test_a_client_reattaches_and_resumes_after_its_acknowledgement(
    accounts: Accounts,
) -> None:
    await reattach_flow(accounts)


def test_acknowledged_on_one_node_resumed_on_another(tmp_path: Path) -> None:
    # Synchronous: the deployment's clean-up runs an event loop of its own.
    with deployment(tmp_path, "production", nodes=2) as deployed:
        asyncio.run(reattach_flow(deployed))


async def test_the_asgi_transport_attaches_too(tmp_path: Path) -> None:
    # The lean transport is the default; the Starlette endpoint shares the hub.
    with deployment(tmp_path, "embedded", ws="auto") as deployed:
        await reattach_flow(deployed)


async def stored(http: httpx.AsyncClient, headers: dict[str, str], sid: str, position: int) -> None:
    """Wait (bounded) until the subscription's stored position is ``position``."""
    async with asyncio.timeout(FRAME_TIMEOUT):
        while True:
            view = (await http.get(f"/v2/subscriptions/{sid}", headers=headers)).json()
            if view["position"] == position:
                return
            await asyncio.sleep(0.05)


async def test_the_python_client_attaches_and_acknowledges(tmp_path: Path) -> None:
    with deployment(tmp_path, "embedded") as deployed:
        [server] = deployed.nodes
        client = DefiRealtimeClient(server.base_url, api_key=deployed.alice["X-API-Key"])
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
            await aingest(http, deployed.alice, obs("aave", 1.0, T0, name="Aave"))
            sid = (
                await http.post(
                    "/v2/subscriptions", json={"channel": "protocols"}, headers=deployed.alice
                )
            ).json()["id"]
            await aingest(http, deployed.alice, obs("aave", 2.0, T0 + 1))
            await aingest(http, deployed.alice, obs("aave", 3.0, T0 + 2))
            async with asyncio.timeout(10):
                async with client.attach(sid) as live:
                    first = await anext(live)
                    assert first.data.value == 2.0  # type: ignore[union-attr]
                    assert await live.ack()
                    await stored(http, deployed.alice, sid, first.position)
                # Another process, later: after the acknowledged update.
                async with client.attach(sid) as again:
                    second = await anext(again)
                    assert second.data.value == 3.0  # type: ignore[union-attr]


# Production only: tests/unit/test_subscription_webhooks.py runs the loop on the embedded store.
@pytest.mark.parametrize("backend", ["production"])
def test_a_webhook_subscription_is_delivered_signed_once_across_a_restart(
    tmp_path: Path, backend: str
) -> None:
    """Created over REST; the receiver refuses while the first server runs (nothing is
    stored), the server stops, the receiver comes back, a second server on the same stores
    delivers everything once, in order, signed."""
    receiver_up = threading.Event()
    with (
        WebhookReceiver(lambda _n: 200 if receiver_up.is_set() else 503) as receiver,
        contextlib.ExitStack() as stack,
    ):
        overrides = stack.enter_context(production_settings()) if backend == "production" else {}
        data_dir = tmp_path / "node0"
        alice = _issue(Settings(data_dir=data_dir, **overrides), "alice")
        headers = {"X-API-Key": alice}
        server_settings = {**overrides, **FAST_WEBHOOKS}
        body = {
            "channel": "protocols",
            "params": {"protocolIds": ["aave", "curve"]},
            "webhook": {"url": receiver.url, "secret": "s3cret"},
        }
        with (
            start_server(data_dir, api_key=alice, **server_settings) as server,
            httpx.Client(base_url=server.base_url, timeout=10.0) as http,
        ):
            created = http.post("/v2/subscriptions", json=body, headers=headers)
            assert created.status_code == 200, created.text
            subscription = created.json()
            assert subscription["delivery"] == "webhook"
            assert subscription["webhook"] == {"url": receiver.url, "secret_set": True}
            path = f"/v2/subscriptions/{subscription['id']}"
            ingest(
                http,
                headers,
                obs("aave", 1.0, T0, name="Aave"),
                obs("uniswap", 2.0, T0, name="Uniswap"),
            )
            receiver.wait_for(2)  # refused, and refused again after the back-off
            assert http.get(path, headers=headers).json()["position"] == subscription["position"]
        receiver_up.set()
        with (
            start_server(data_dir, api_key=alice, **server_settings) as server,
            httpx.Client(base_url=server.base_url, timeout=10.0) as http,
        ):
            ingest(http, headers, obs("curve", 3.0, T0 + 1, name="Curve"))
            delivered = wait_for(
                lambda: [u for r in receiver.successes for u in json.loads(r.body)["updates"]],
                lambda found: len(found) >= 2,
            )
            last = json.loads(receiver.successes[-1].body)["through"]
            wait_for(lambda: http.get(path, headers=headers).json()["position"], last.__eq__)
    assert [(u["data"]["id"], u["data"]["value"]) for u in delivered] == [
        ("aave", 1.0),
        ("curve", 3.0),
    ]
    assert delivered[0]["position"] < delivered[1]["position"]
    for request in receiver.requests:
        timestamp = request.headers["x-signature-timestamp"]
        assert request.headers["x-signature"] == sign("s3cret", timestamp, request.body)
