"""The examples in ``examples/`` run against a local server: the trading bot reacts to a
TVL drain, the webhook receiver verifies the server's signed alert notifications."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.adapters.webhook_notifier import sign

from .child import Example
from .conftest import LiveServer, obs, settle, start_server

NOW = time.time() - 60
LISTING = {"name": "Aave V3", "category": "Lending", "chains": ["Ethereum"]}
WAIT = 30.0


@pytest.fixture
def examples() -> Iterator[list[Example]]:
    started: list[Example] = []
    yield started
    for example in started:
        example.stop()


def test_trading_bot_sells_when_tvl_drains(
    server: LiveServer, http: httpx.Client, examples: list[Example]
) -> None:
    def ingest(value: float, at: float, **listing: Any) -> None:
        body = {"observations": [obs("aave-v3", value, at, **listing)]}
        response = http.post("/v2/ingest", json=body, headers=server.headers)
        assert response.status_code == 200, response.text

    ingest(100.0, NOW - 30, **LISTING)
    settle(http)
    bot = Example(
        "trading_bot.py",
        *("--url", server.base_url, "--protocol", "aave-v3", "--drop", "10"),
        *("--window", "3600", "--max-signals", "1", "--timeout", str(WAIT)),
    )
    examples.append(bot)
    assert bot.next_line() == {"watching": "aave-v3", "name": "Aave V3", "tvl": 100.0}
    assert bot.next_line() == {"streaming": True}
    ingest(95.0, NOW - 20)  # 5 % down: nothing to do
    ingest(85.0, NOW - 10)  # 15 % below the peak: sell
    signal = bot.next_line()
    assert bot.wait() == 0, bot.stderr()
    assert signal["action"] == "sell"
    assert (signal["protocol"], signal["tvl"], signal["peak"]) == ("aave-v3", 85.0, 100.0)
    assert signal["drop_pct"] == pytest.approx(15.0)


SECRET = "receiver-secret"


def post(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=10.0)


def signed(
    body: bytes, key: str, *, at: float | None = None, secret: str = SECRET
) -> dict[str, str]:
    timestamp = str(int(time.time() if at is None else at))
    return {
        "Content-Type": "application/json",
        "X-Idempotency-Key": key,
        "X-Signature-Timestamp": timestamp,
        "X-Signature": sign(secret, timestamp, body),
    }


def test_webhook_receiver_verifies_the_servers_notifications(
    tmp_path: Path, examples: list[Example]
) -> None:
    receiver = Example(
        "webhook_receiver.py", "--port", "0", "--secret", SECRET, "--max-events", "2"
    )
    examples.append(receiver)
    hook = receiver.next_line()["listening"]
    with (
        start_server(tmp_path / "data", allow_private_webhooks=True) as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=10.0) as http,
    ):

        def ingest(value: float, at: float, **listing: Any) -> None:
            body = {"observations": [obs("aave-v3", value, at, **listing)]}
            assert http.post("/v2/ingest", json=body).status_code == 200

        ingest(100.0, NOW - 30, **LISTING)
        settle(http)
        rule = {
            "name": "aave drains",
            "target": {"protocol": "aave-v3"},
            "condition": {"kind": "threshold", "direction": "below", "value": 50.0},
            "channels": [{"kind": "webhook", "url": hook, "secret": SECRET}],
            "cooldown": 0,
        }
        created = http.post("/v2/alerts", json=rule)
        assert created.status_code in (200, 201), created.text
        rule_id = created.json()["id"]
        ingest(40.0, NOW - 20)  # fires
        fired = receiver.next_line()["alert"]
        assert (fired["alertId"], fired["condition"]) == (rule_id, "firing")
        key = fired["idempotencyKey"]

        # What the receiver refuses or does not act on twice (the test signs as the server
        # does, with the server's own function).
        body = json.dumps(fired, separators=(",", ":")).encode()
        again = post(hook, body, signed(body, key))
        assert (again.status_code, again.json()) == (200, {"duplicate": True})
        old = post(hook, body, signed(body, "another-key", at=time.time() - 3600))
        assert old.status_code == 401
        assert "timestamp" in old.json()["error"]
        tampered = body.replace(b"firing", b"resolve")
        forged = signed(body, "another-key")
        assert post(hook, tampered, forged).status_code == 401
        wrong_secret = post(hook, body, signed(body, "another-key", secret="guess"))
        assert wrong_secret.status_code == 401
        unsigned = post(hook, body, {"X-Idempotency-Key": "another-key"})
        assert unsigned.status_code == 401

        ingest(100.0, NOW - 10)  # resolves: the second real notification
        resolved = receiver.next_line()["alert"]
        assert (resolved["alertId"], resolved["condition"]) == (rule_id, "resolved")
        assert receiver.wait() == 0, receiver.stderr()
