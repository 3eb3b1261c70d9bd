"""The audit trail end to end over HTTP (issue 13, part 3), on the embedded adapters and on
PostgreSQL + Redis + RabbitMQ: two accounts never see each other's records, an admin key
sees all, and a refused or repeated request is audited while the main log's head stays put.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.application.app import DefiRealtime
from defi_realtime.domain.api_key import ApiKey
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import assert_error, log_head, obs, production_settings, start_server


@contextlib.contextmanager
def deployment(backend: str) -> Iterator[dict[str, Any]]:
    if backend == "production":
        with production_settings() as overrides:
            yield overrides
    else:
        yield {}


def issue(settings: Settings, name: str) -> tuple[str, ApiKey]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = DefiRealtime(env=settings.event_store_env)
    try:
        secret = app.issue_api_key(name, tier="pro")
        key = app.authenticate(secret)
        assert key is not None
        return secret, key
    finally:
        app.close()


def records(http: httpx.Client, secret: str, **params: Any) -> list[dict[str, Any]]:
    response = http.get("/v2/audit", params=params, headers={"X-API-Key": secret})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["records"]
    return found


@pytest.mark.parametrize("backend", ["embedded", "production"])
def test_accounts_see_only_their_own_audit_records(tmp_path: Path, backend: str) -> None:
    with deployment(backend) as overrides:
        data_dir = tmp_path / "data"
        settings = Settings(data_dir=data_dir, **overrides)
        admin, admin_key = issue(settings, "operator")
        alice, alice_key = issue(settings, "alice")
        bob, bob_key = issue(settings, "bob")
        with (
            start_server(data_dir, admin, admin_key_ids=str(admin_key.id), **overrides) as live,
            httpx.Client(base_url=live.base_url, timeout=10.0) as http,
        ):
            now = time.time() - 60
            head = log_head(http)

            # Refused: nothing recorded in the main log, but audited with its outcome.
            refused = http.post(
                "/v2/ingest",
                json={"observations": [obs("audit-lend", -5.0, now)]},
                headers={"X-API-Key": alice, "X-Request-ID": "alice-refused-1"},
            )
            assert_error(refused, 422, "invalid_items")
            assert log_head(http) == head

            # Accepted once, then the same batch again: a duplicate moves nothing.
            batch = {"observations": [obs("audit-lend", 5e8, now, name="Audit Lend")]}
            first = http.post("/v2/ingest", json=batch, headers={"X-API-Key": alice})
            assert first.status_code == 200, first.text
            head = log_head(http)
            again = http.post("/v2/ingest", json=batch, headers={"X-API-Key": alice})
            assert again.status_code == 200
            assert again.json()["duplicates"] == 1
            assert log_head(http) == head

            rule = {
                "target": {"protocol": "audit-lend"},
                "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
                "channels": [{"kind": "websocket"}],
            }
            created = http.post("/v2/alerts", json=rule, headers={"X-API-Key": bob})
            assert created.status_code == 200, created.text
            # A wrong key: no account to name, still audited (an admin sees it).
            wrong = http.post("/v2/alerts", json=rule, headers={"X-API-Key": "drt_wrong"})
            assert wrong.status_code == 401

            mine = records(http, alice)
            assert [(r["action"], r["outcome"]) for r in mine] == [
                ("ingest", "ok"),
                ("ingest", "ok"),
                ("ingest", "rejected: 422"),
            ]
            assert {r["account_id"] for r in mine} == {str(alice_key.account_id)}
            assert {r["key_id"] for r in mine} == {str(alice_key.id)}
            assert mine[2]["request_id"] == "alice-refused-1"
            assert mine[2]["client"] == "127.0.0.1"
            assert mine[2]["detail"] == {
                "accepted": 0,
                "duplicates": 0,
                "rejected": 1,
                "position": 0,
                "recorded": [],
            }
            # The accepted batch names where its observations are in the main log.
            assert mine[1]["detail"]["accepted"] == 1
            assert mine[1]["detail"]["position"] == first.json()["position"]
            assert mine[0]["detail"]["duplicates"] == 1

            theirs = records(http, bob)
            assert [(r["action"], r["account_id"]) for r in theirs] == [
                ("alert_rule.create", str(bob_key.account_id))
            ]
            # Filtering by the other account cannot reach its records.
            assert records(http, bob, actor=str(alice_key.account_id)) == []
            assert records(http, alice, action="alert_rule") == []

            everyone = records(http, admin)
            assert [r["action"] for r in everyone] == [
                "alert_rule.create",  # the wrong key's
                "alert_rule.create",
                "ingest",
                "ingest",
                "ingest",
            ]
            assert everyone[0]["outcome"] == "rejected: 401"
            assert everyone[0]["account_id"] is None
            assert records(http, admin, actor=str(bob_key.id)) == theirs
            assert [r["action"] for r in records(http, admin, action="ingest", limit=2)] == [
                "ingest",
                "ingest",
            ]

            # Reading the audit trail is not itself audited, and needs a key.
            assert len(records(http, admin)) == 5
            assert_error(http.get("/v2/audit"), 401, "unauthorized")

            concurrent_ingests_name_their_accounts(live.base_url, http, admin, alice, bob)


def concurrent_ingests_name_their_accounts(
    base_url: str, http: httpx.Client, admin: str, alice: str, bob: str
) -> None:
    """Two accounts ingest at once into the same protocols (the writer commits concurrent
    batches in one group): every new main log position is named by exactly one audited
    request, found by ``GET /v2/audit?recorded=N``: the sender's, and its account alone
    sees it."""
    head = log_head(http)
    at = time.time() - 30

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
            posts = [
                client.post(
                    "/v2/ingest",
                    json={
                        "observations": [
                            obs("audit-lend", 1e8 + i, at + i, chain=chain)
                            for chain in ("ethereum", "arbitrum")
                        ]
                    },
                    headers={"X-API-Key": secret},
                )
                for i in range(8)
                for secret in (alice, bob)
            ]
            return await asyncio.gather(*posts)

    answers = asyncio.run(send())
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    new = range(head + 1, log_head(http) + 1)
    assert len(new) == sum(answer.json()["accepted"] for answer in answers)
    ingests = records(http, admin, action="ingest", limit=len(answers))
    owners: dict[int, str] = {}
    for record in ingests:
        for first, last in record["detail"]["recorded"]:
            for position in range(first, last + 1):
                assert position not in owners
                owners[position] = record["account_id"]
    assert sorted(owners) == list(new)
    by_secret = {secret: records(http, secret, limit=1)[0]["account_id"] for secret in (alice, bob)}
    for position in new:
        [found] = records(http, admin, recorded=position)
        assert found["account_id"] == owners[position]
        for secret, account in by_secret.items():
            mine = records(http, secret, recorded=position)
            assert [r["account_id"] for r in mine] == (
                [account] if account == owners[position] else []
            )
