"""Embedded alert delivery survives a restart: the real server (SQLite, in-process queue)
stopped while a webhook waits for its retry, started again on the same ``DATA_DIR``."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from defi_realtime.adapters.sql_delivery_log import SqlDeliveryLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import start_server, wait_for
from tests.webhook_receiver import WebhookReceiver

T0 = 1_700_000_000.0
# Attempt 2 would come a minute after attempt 1: long after the first server stopped.
SLOW_RETRIES = {"allow_private_webhooks": True, "notify_backoff_base": 60.0, "notify_jitter": 0.0}


def fire_webhook_rule(settings: Settings, url: str, api_key: str) -> str:
    """A rule of the account of the server's key fired through the application, as the
    evaluator would."""
    app = DefiRealtime(env=settings.event_store_env)
    try:
        key = app.authenticate(api_key)
        assert key is not None
        owner = key.owner
        # A token is known once it has a price (above the threshold: no firing).
        app.ingest(
            [
                build_batch(
                    prices=[{"token": "coingecko:ethereum", "price": 150.0, "observed_at": T0 - 60}]
                )
            ]
        )
        rule_id = app.create_alert_rule(
            owner=owner,
            target={"token": "coingecko:ethereum"},
            condition={"kind": "threshold", "direction": "below", "value": 100.0},
            channels=[{"kind": "webhook", "url": url}],
            cooldown=0,
            name="eth low",
        )
        rule = app.get_alert_rule(rule_id, owner)
        assert rule.observe(90.0, T0) == "firing"
        app.save(rule)
    finally:
        app.close()
    return str(rule_id)


def deliveries(base_url: str, headers: dict[str, str], rule_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base_url}/v2/alerts/{rule_id}/history", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["deliveries"]
    return found


def test_a_webhook_waiting_for_its_retry_is_delivered_once_after_a_restart(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    receiver_up = threading.Event()
    with WebhookReceiver(lambda _n: 200 if receiver_up.is_set() else 503) as receiver:
        with start_server(data_dir, **SLOW_RETRIES) as server:
            rule_id = fire_webhook_rule(server.settings, receiver.url, server.api_key)
            wait_for(
                lambda: deliveries(server.base_url, server.headers, rule_id),
                lambda found: [d["status"] for d in found] == ["failed"],
                timeout=10.0,
            )
        # Stopped with attempt 2 a minute away; the receiver is back.
        receiver_up.set()
        with start_server(data_dir, api_key=server.api_key, **SLOW_RETRIES) as server:
            found = wait_for(
                lambda: deliveries(server.base_url, server.headers, rule_id),
                lambda found: [d["status"] for d in found] == ["failed", "delivered"],
                timeout=10.0,
            )
        # A third start has nothing left to deliver.
        with start_server(data_dir, api_key=server.api_key, **SLOW_RETRIES) as server:
            time.sleep(1.0)
            assert len(deliveries(server.base_url, server.headers, rule_id)) == 2
    key = f"{rule_id}:1:0"
    assert [(d["attempt"], d["httpStatus"], d["idempotencyKey"]) for d in found] == [
        (1, 503, key),
        (2, 200, key),
    ]
    assert [r.status for r in receiver.requests] == [503, 200]
    assert len(receiver.successes) == 1
    assert {r.headers["x-idempotency-key"] for r in receiver.requests} == {key}
    journal = SqlDeliveryLog(server.settings.history_url)
    try:
        assert journal.pending() == []
    finally:
        journal.close()
