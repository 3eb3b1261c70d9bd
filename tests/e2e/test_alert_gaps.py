"""Issue 13 part 6 end to end, on the embedded adapters and on PostgreSQL + Redis + RabbitMQ:
rules that cannot work are refused when created, only rules with a ``websocket`` channel
reach the owner's sockets, a resumed rule is re-evaluated against the current value, and a
rule's dead letters are listed and redriven over REST."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from defi_realtime.adapters.rabbit_notification_queue import RabbitNotificationQueue
from defi_realtime.application.delivery import RetryPolicy
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import (
    LiveServer,
    assert_error,
    issue_key,
    obs,
    production_settings,
    start_server,
)
from tests.webhook_receiver import WebhookReceiver

BACKENDS = ("embedded", "production")
CLI = str(Path(sys.executable).with_name("defi-realtime"))
T0 = 1_765_000_000.0
FRAME_TIMEOUT = 5.0
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1e9}
BELOW_100 = {"kind": "threshold", "direction": "below", "value": 100.0}


@contextlib.contextmanager
def delete_notification_queues(amqp_url: str, name: str) -> Iterator[None]:
    """Removes the notification queues a server declared under ``name`` (with the default
    retry policy: the retry queues' names hold their TTLs) afterwards."""
    try:
        yield
    finally:
        settings = Settings()
        policy = RetryPolicy(
            max_attempts=settings.notify_max_attempts,
            base_delay=settings.notify_backoff_base,
            max_delay=settings.notify_backoff_max,
            jitter=settings.notify_jitter,
        )
        names = RabbitNotificationQueue(amqp_url, policy, name).queue_names

        async def delete() -> None:
            connection = await aio_pika.connect(amqp_url, timeout=10)
            async with connection:
                channel = await connection.channel()
                for queue in names:
                    await channel.queue_delete(queue)
                await channel.exchange_delete(name)

        asyncio.run(delete())


@pytest.fixture
def gap_server(tmp_path: Path, backend: str) -> Iterator[LiveServer]:
    """A fresh server; in production with notification queues of its own (removed after)."""
    if backend == "production":
        with production_settings() as overrides:
            name = f"{overrides['amqp_exchange']}.notifications"
            with (
                delete_notification_queues(overrides["amqp_url"], name),
                start_server(tmp_path / "data", amqp_notifications=name, **overrides) as live,
            ):
                yield live
        return
    with start_server(tmp_path / "data") as live:
        yield live


@pytest.fixture
def server(gap_server: LiveServer) -> LiveServer:
    """The module's server (named ``server`` so that BACKENDS parametrizes it)."""
    return gap_server


async def ingest(http: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> None:
    response = await http.post("/v2/ingest", json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert not response.json().get("rejected"), response.text


async def create(http: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = await http.post("/v2/alerts", json={"cooldown": 0, **fields}, headers=headers)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    return rule


@asynccontextmanager
async def alerts_socket(server: LiveServer) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(server.ws_url, additional_headers=server.headers, open_timeout=5)
    try:
        await ws.send(json.dumps({"type": "subscribe", "channel": "alerts"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
        assert (frame["type"], frame["channel"]) == ("subscribed", "alerts")
        yield ws
    finally:
        await ws.close()


async def next_alert(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == "alert":
                return frame


async def rule_state(http: httpx.AsyncClient, headers: dict[str, str], rule_id: str) -> str:
    response = await http.get(f"/v2/alerts/{rule_id}", headers=headers)
    assert response.status_code == 200, response.text
    firing: str = response.json()["firing"]
    return firing


async def eventually(fetch: Any, expected: Any, timeout: float = FRAME_TIMEOUT) -> None:
    """Poll ``fetch`` until it returns ``expected`` (the evaluator and the delivery are
    asynchronous); bounded."""
    async with asyncio.timeout(timeout):
        while (value := await fetch()) != expected:  # noqa: ASYNC110 - polls over HTTP
            await asyncio.sleep(0.02)
    assert value == expected


async def test_rules_that_cannot_work_are_refused_when_created(server: LiveServer) -> None:
    headers = server.headers
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        await ingest(http, headers, observations=[obs("gap-lend", 2e9, T0, name="Gap Lend")])
        target = {"protocol": "gap-lend"}
        for url in ("http://127.0.0.1:9/hook", "http://[::1]/hook", "http://localhost/hook"):
            body = {"target": target, "condition": BELOW_1B}
            body["channels"] = [{"kind": "websocket"}, {"kind": "webhook", "url": url}]
            response = await http.post("/v2/alerts", json=body, headers=headers)
            error = assert_error(response, 400, "invalid_rule")
            assert error["details"] == {"field": "channels[1].url"}, error
            assert "refused" in error["message"]
        # Nor by a change of channels.
        rule = await create(
            http, headers, target=target, condition=BELOW_1B, channels=[{"kind": "websocket"}]
        )
        private = {"channels": [{"kind": "webhook", "url": "http://10.0.0.7/hook"}]}
        response = await http.put(f"/v2/alerts/{rule['id']}", json=private, headers=headers)
        assert_error(response, 400, "invalid_rule")
        assert (await http.get(f"/v2/alerts/{rule['id']}", headers=headers)).json()["channels"] == [
            {"kind": "websocket"}
        ]

        # A token nobody priced is unknown, like a protocol nobody listed: same answer.
        unknown = await http.post(
            "/v2/alerts",
            json={
                "target": {"token": "coingecko:nonexistent"},
                "condition": BELOW_100,
                "channels": [{"kind": "websocket"}],
            },
            headers=headers,
        )
        token_error = assert_error(unknown, 422, "unknown_target")
        assert token_error["details"] == {"field": "target.token"}
        assert "coingecko:nonexistent" in token_error["message"]
        typo = await http.post(
            "/v2/alerts",
            json={
                "target": {"protocol": "gap-lendd"},
                "condition": BELOW_1B,
                "channels": [{"kind": "websocket"}],
            },
            headers=headers,
        )
        assert assert_error(typo, 422, "unknown_target")["details"] == {"field": "target.protocol"}
        # Priced once (an EVM address in any case): known.
        usdc = "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
        price = {"token": usdc.lower(), "price": 1.0, "observed_at": T0}
        await ingest(http, headers, prices=[price])
        created = await create(
            http,
            headers,
            target={"token": usdc},
            condition=BELOW_100,
            channels=[{"kind": "websocket"}],
        )
        assert created["target"]["token"] == usdc.lower()


async def test_only_websocket_rules_reach_sockets_and_resume_reevaluates(
    server: LiveServer,
) -> None:
    headers = server.headers
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        await ingest(http, headers, observations=[obs("sock-lend", 2e9, T0, name="Sock Lend")])
        target = {"protocol": "sock-lend"}
        pushed = await create(
            http, headers, target=target, condition=BELOW_1B, channels=[{"kind": "websocket"}]
        )
        mailed = await create(
            http,
            headers,
            target=target,
            condition=BELOW_1B,
            channels=[{"kind": "email", "address": "ops@example.com"}],
        )
        async with alerts_socket(server) as ws:
            await ingest(http, headers, observations=[obs("sock-lend", 5e8, T0 + 60)])
            frame = await next_alert(ws)
            assert (frame["alertId"], frame["condition"]) == (pushed["id"], "firing")
            # The email-only rule fired as well, and its transition reached no socket.
            await eventually(lambda: rule_state(http, headers, mailed["id"]), "firing")
            with pytest.raises(TimeoutError):
                await next_alert(ws, timeout=0.5)

            # Paused while firing; the value recovers; resumed: re-evaluated at once.
            response = await http.post(f"/v2/alerts/{pushed['id']}/pause", headers=headers)
            assert response.status_code == 200, response.text
            await ingest(http, headers, observations=[obs("sock-lend", 3e9, T0 + 120)])
            await eventually(lambda: rule_state(http, headers, mailed["id"]), "resolved")
            assert await rule_state(http, headers, pushed["id"]) == "firing"
            response = await http.post(f"/v2/alerts/{pushed['id']}/resume", headers=headers)
            assert response.status_code == 200, response.text
            frame = await next_alert(ws)
            assert (frame["alertId"], frame["condition"]) == (pushed["id"], "resolved")
            assert (frame["timestamp"], frame["data"]["measure"]) == (T0 + 120, 3e9)
            assert frame["data"]["idempotencyKey"] == f"{pushed['id']}:2"
            await eventually(lambda: rule_state(http, headers, pushed["id"]), "resolved")
            with pytest.raises(TimeoutError):
                await next_alert(ws, timeout=0.3)

        # A client resuming from before the drop replays the same: the email-only rule's
        # transitions stay off the sockets.
        async with asyncio.timeout(10):
            ws = await connect(server.ws_url, additional_headers=headers, open_timeout=5)
        try:
            await ws.send(json.dumps({"type": "subscribe", "channel": "alerts", "since": 0}))
            replayed = [await next_alert(ws), await next_alert(ws)]
            assert {frame["alertId"] for frame in replayed} == {pushed["id"]}
            with pytest.raises(TimeoutError):
                await next_alert(ws, timeout=0.3)
        finally:
            await ws.close()


async def test_dead_letters_are_their_owners_only(server: LiveServer) -> None:
    """Listed and redriven over REST by the rule's owner only (in production from
    RabbitMQ's dead queue, which the API node reads without delivering)."""
    headers = server.headers
    stranger = {"X-API-Key": issue_key(server.settings, name="mallory")}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        price = {"token": "coingecko:ethereum", "price": 150.0, "observed_at": T0}
        await ingest(http, headers, prices=[price])
        rule = await create(
            http,
            headers,
            target={"token": "coingecko:ethereum"},
            condition=BELOW_100,
            channels=[{"kind": "websocket"}],
        )
        path = f"/v2/alerts/{rule['id']}/dead-letters"
        for method, url in (("GET", path), ("POST", f"{path}/redrive")):
            assert_error(await http.request(method, url, headers=stranger), 404, "alert_not_found")
            assert_error(await http.request(method, url), 401, "unauthorized")
        listed = await http.get(path, headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json() == {"alertId": rule["id"], "deadLetters": [], "total": 0}
        redriven = await http.post(f"{path}/redrive", headers=headers)
        assert redriven.status_code == 200, redriven.text
        assert redriven.json() == {"alertId": rule["id"], "redriven": [], "total": 0}


async def test_a_webhook_dead_letter_is_redriven_over_rest(tmp_path: Path) -> None:
    """Embedded (the server delivers): a receiver failing until switched on; after the
    redrive it gets the notification under the same idempotency key, and the history
    records the redrive and the attempt."""
    switched_on = threading.Event()
    with (
        WebhookReceiver(lambda _n: 200 if switched_on.is_set() else 503) as receiver,
        start_server(
            tmp_path / "data",
            allow_private_webhooks=True,
            notify_max_attempts=2,
            notify_backoff_base=0.05,
            notify_jitter=0.0,
        ) as server,
    ):
        headers = server.headers
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
            price = {"token": "coingecko:ethereum", "price": 150.0, "observed_at": T0}
            await ingest(http, headers, prices=[price])
            rule = await create(
                http,
                headers,
                target={"token": "coingecko:ethereum"},
                condition=BELOW_100,
                channels=[{"kind": "webhook", "url": receiver.url, "secret": "s3cret"}],
            )
            await ingest(http, headers, prices=[{**price, "price": 90.0, "observed_at": T0 + 60}])
            path = f"/v2/alerts/{rule['id']}/dead-letters"

            async def parked() -> list[dict[str, Any]]:
                response = await http.get(path, headers=headers)
                assert response.status_code == 200, response.text
                letters: list[dict[str, Any]] = response.json()["deadLetters"]
                return letters

            async def statuses() -> list[str]:
                response = await http.get(f"/v2/alerts/{rule['id']}/history", headers=headers)
                return [row["status"] for row in response.json()["deliveries"]]

            await eventually(statuses, ["failed", "dead_lettered"])
            await eventually(lambda: _count(parked), 1)
            [letter] = await parked()
            key = f"{rule['id']}:1:0"
            assert (letter["idempotencyKey"], letter["attempt"]) == (key, 2)
            assert letter["reason"] == "HTTP 503"
            assert letter["channel"] == {"kind": "webhook", "target": receiver.url}

            # The operator's view, from another process (embedded: the journal).
            listed = await asyncio.to_thread(cli, server.data_dir, "dead-letters", rule["id"])
            assert listed.returncode == 0, listed.stderr
            assert [d["idempotencyKey"] for d in json.loads(listed.stdout)["deadLetters"]] == [key]
            switched_on.set()
            response = await http.post(f"{path}/redrive", headers=headers)
            assert response.status_code == 200, response.text
            assert [r["idempotencyKey"] for r in response.json()["redriven"]] == [key]
            await eventually(statuses, ["failed", "dead_lettered", "redriven", "delivered"])
            assert await parked() == []
            [delivered] = receiver.successes
            assert delivered.headers["x-idempotency-key"] == key
            assert json.loads(delivered.body)["idempotencyKey"] == key
            history = (await http.get(f"/v2/alerts/{rule['id']}/history", headers=headers)).json()
            assert history["notifications"][key] == {"attempts": 3, "status": "delivered"}


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``defi-realtime alerts ARGS`` over ``data_dir`` (embedded, whatever the environment)."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL"}
    }
    env.update({"DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    return subprocess.run(
        [CLI, "alerts", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def _count(fetch: Any) -> int:
    return len(await fetch())
