"""``GET /v2/alerts/{id}/history`` on the embedded server: the rule's transitions and its
delivery attempts (delivered in-process to a real HTTP receiver), owner only."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from tests.e2e.conftest import assert_error, issue_key, start_server, wait_for
from tests.webhook_receiver import WebhookReceiver

T0 = 1_700_000_000.0


def test_history_lists_transitions_and_every_attempt_to_the_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOW_PRIVATE_WEBHOOKS", "true")
    monkeypatch.setenv("NOTIFY_BACKOFF_BASE", "0.05")
    with (
        WebhookReceiver(lambda n: 500 if n == 1 else 200) as receiver,
        start_server(tmp_path / "data") as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        stranger = {"X-API-Key": issue_key(server.settings, name="mallory")}
        # The rule is made and fired through the application, as the evaluator would.
        app = DefiRealtime(env=server.settings.event_store_env)
        try:
            key = app.authenticate(server.api_key)
            assert key is not None
            owner = key.owner
            # A token is known once it has a price (above the threshold: no firing).
            app.ingest(
                [
                    build_batch(
                        prices=[
                            {"token": "coingecko:ethereum", "price": 150.0, "observed_at": T0 - 60}
                        ]
                    )
                ]
            )
            rule_id = app.create_alert_rule(
                owner=owner,
                target={"token": "coingecko:ethereum"},
                condition={"kind": "threshold", "direction": "below", "value": 100.0},
                channels=[{"kind": "websocket"}, {"kind": "webhook", "url": receiver.url}],
                cooldown=0,
                name="eth low",
            )
            rule = app.get_alert_rule(rule_id, owner)
            assert rule.observe(90.0, T0) == "firing"
            app.save(rule)
        finally:
            app.close()
        path = f"/v2/alerts/{rule_id}/history"

        def fetch() -> dict[str, Any]:
            response = http.get(path, headers=server.headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        history = wait_for(
            fetch,
            lambda h: (
                bool(h["transitions"])
                and [d["status"] for d in h["deliveries"]] == ["failed", "delivered"]
            ),
            timeout=10.0,
        )
        assert history["alertId"] == str(rule_id)
        assert history["name"] == "eth low"
        assert history["firing"] == "firing"
        [transition] = history["transitions"]
        assert transition["kind"] == "fired"
        assert transition["measure"] == 90.0
        assert transition["observedAt"] == T0
        assert transition["position"] > 0
        failed, delivered = history["deliveries"]
        key = f"{rule_id}:1:1"  # the webhook is the rule's second channel
        assert failed["idempotencyKey"] == delivered["idempotencyKey"] == key
        assert (failed["attempt"], failed["httpStatus"]) == (1, 500)
        assert (delivered["attempt"], delivered["httpStatus"]) == (2, 200)
        assert delivered["channel"] == {"kind": "webhook", "target": receiver.url}
        assert delivered["position"] == transition["position"]
        assert history["notifications"] == {key: {"attempts": 2, "status": "delivered"}}
        assert len(receiver.successes) == 1

        # Nobody else may see it, nor learn that it exists.
        assert_error(http.get(path, headers=stranger), 404, "alert_not_found")
        assert_error(http.get(path), 401, "unauthorized")
        assert_error(
            http.get(f"/v2/alerts/{uuid.uuid4()}/history", headers=server.headers),
            404,
            "alert_not_found",
        )
        assert_error(
            http.get("/v2/alerts/not-a-uuid/history", headers=server.headers),
            404,
            "alert_not_found",
        )
        assert_error(
            http.get(path, params={"limit": "0"}, headers=server.headers),
            400,
            "invalid_parameter",
        )
