"""``DELETE /v2/account`` and ``GET /v2/account/export`` end to end on the embedded server:
the export holds the account's rule with its webhook and email (never a secret), the erase
revokes the calling key at once, and afterwards no file under DATA_DIR holds the webhook
URL or the email address. (The stores' own raw searches, on SQLite and on PostgreSQL +
Redis: tests/unit/test_privacy.py, tests/integration/test_privacy_postgres.py.)"""

from __future__ import annotations

import uuid

import httpx

from tests.e2e.conftest import LiveServer, assert_error, obs, settle
from tests.privacy_world import found_in_files

T0 = 1_765_000_000.0


def test_export_then_erase_the_calling_account(server: LiveServer, http: httpx.Client) -> None:
    unique = uuid.uuid4().hex[:12]
    url, email = f"https://hooks.example.com/{unique}", f"{unique}@mail.example.org"
    headers = server.headers
    ingested = http.post(
        "/v2/ingest", json={"observations": [obs("aave", 2e9, T0, name="Aave")]}, headers=headers
    )
    assert ingested.status_code == 200, ingested.text
    created = http.post(
        "/v2/alerts",
        json={
            "name": f"watch {unique}",
            "target": {"protocol": "aave"},
            "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
            "channels": [
                {"kind": "webhook", "url": url, "secret": f"whsec-{unique}"},
                {"kind": "email", "address": email},
            ],
        },
        headers=headers,
    )
    assert created.status_code == 200, created.text
    rule_id = created.json()["id"]
    settle(http)

    exported = http.get("/v2/account/export", headers=headers)
    assert exported.status_code == 200, exported.text
    body = exported.json()
    [rule] = body["alert_rules"]
    assert rule["id"] == rule_id
    assert rule["channels"] == [
        {"kind": "webhook", "url": url, "secret_set": True},
        {"kind": "email", "address": email},
    ]
    assert [key["name"] for key in body["keys"]] == ["test"]
    assert server.api_key not in exported.text
    assert f"whsec-{unique}" not in exported.text
    assert found_in_files(server.settings.data_dir, {"url": url.encode()})  # the read model

    erased = http.delete("/v2/account", headers=headers)
    assert erased.status_code == 200, erased.text
    assert erased.json()["keys_revoked"] == 1
    assert erased.json()["rules_deleted"] == 1
    assert erased.json()["key_destroyed"] is True
    assert erased.json()["scrubbed"] is True
    # The calling key is revoked with its account: refused at once.
    assert_error(http.get("/v2/account/export", headers=headers), 401, "unauthorized")
    settle(http)
    needles = {"webhook URL": url.encode(), "email": email.encode()}
    assert found_in_files(server.settings.data_dir, needles) == {}
