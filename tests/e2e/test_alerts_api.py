"""End-to-end alert rules: the real server (REST + WebSocket) and the CLI.

One server for the module, with two accounts (``alice`` and ``bob``); each test works on
its own protocols so the tests stay independent.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from defi_realtime.application.app import DefiRealtime
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import LiveServer, assert_error, obs, settle, start_server
from tests.services import require_file

T0 = 1_765_000_000.0
DAY = 86_400.0
FRAME_TIMEOUT = 5.0
DROP_20_IN_24H = {"kind": "pct_change", "direction": "below", "value": -20, "window": "24h"}
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1e9}
WEBHOOK = {"kind": "webhook", "url": "https://hooks.example.com/x", "secret": "s3cret"}

CLI = str(Path(sys.executable).with_name("defi-realtime"))
REAL_HISTORY = (
    Path(__file__).resolve().parents[2].parent / "shared/data/defillama/tvl-history.jsonl.gz"
)


@dataclass
class Accounts:
    server: LiveServer
    alice: dict[str, str]
    bob: dict[str, str]


def _issue(settings: Settings, name: str) -> str:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = DefiRealtime(env=settings.event_store_env)
    try:
        return app.issue_api_key(name=name, tier="pro")
    finally:
        app.close()


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accounts]:
    data_dir = tmp_path_factory.mktemp("alerts") / "data"
    settings = Settings(data_dir=data_dir)
    alice, bob = _issue(settings, "alice"), _issue(settings, "bob")
    with start_server(data_dir, api_key=alice) as server:
        yield Accounts(server, {"X-API-Key": alice}, {"X-API-Key": bob})


@pytest.fixture
def http(accounts: Accounts) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=accounts.server.base_url, timeout=10.0) as client:
        yield client


def list_protocols(http: httpx.Client, accounts: Accounts, *slugs: str, at: float = T0) -> None:
    items = [obs(slug, 2e9, at, name=slug.title(), category="Lending") for slug in slugs]
    response = http.post("/v2/ingest", json={"observations": items}, headers=accounts.alice)
    assert response.status_code == 200, response.text


def create(http: httpx.Client, headers: dict[str, str], slug: str, **fields: Any) -> dict[str, Any]:
    body = {
        "target": {"protocol": slug},
        "condition": BELOW_1B,
        "channels": [{"kind": "websocket"}],
    }
    body.update(fields)
    response = http.post("/v2/alerts", json=body, headers=headers)
    assert response.status_code == 200, response.text
    rule: dict[str, Any] = response.json()
    return rule


def listed_ids(http: httpx.Client, headers: dict[str, str]) -> list[str]:
    response = http.get("/v2/alerts", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["alerts"])
    return [rule["id"] for rule in body["alerts"]]


# --- rules: CRUD and ownership -------------------------------------------------------------


def test_rule_lifecycle_and_ownership(http: httpx.Client, accounts: Accounts) -> None:
    alice, bob = accounts.alice, accounts.bob
    list_protocols(http, accounts, "crud-lend")
    rule = create(
        http,
        alice,
        "crud-lend",
        name="drain",
        condition=DROP_20_IN_24H,
        channels=[WEBHOOK, {"kind": "email", "address": "ops@example.com"}],
        cooldown=600,
    )
    rule_id = rule["id"]
    assert rule["target"] == {"protocol": "crud-lend", "metric": "tvl", "chain": "total"}
    assert rule["condition"] == {**DROP_20_IN_24H, "value": -20.0}
    assert (rule["name"], rule["cooldown"], rule["state"], rule["firing"]) == (
        "drain",
        600,
        "active",
        "resolved",
    )
    # The secret is write-only.
    assert rule["channels"] == [
        {"kind": "webhook", "url": WEBHOOK["url"], "secret_set": True},
        {"kind": "email", "address": "ops@example.com"},
    ]
    assert "s3cret" not in json.dumps(rule)

    # Listed for its owner at once (read-your-writes), never for another account.
    assert rule_id in listed_ids(http, alice)
    assert rule_id not in listed_ids(http, bob)
    assert http.get(f"/v2/alerts/{rule_id}", headers=alice).json() == rule
    for method, path, body in [
        ("GET", "", None),
        ("PUT", "", {"cooldown": 1}),
        ("DELETE", "", None),
        ("POST", "/pause", None),
        ("POST", "/resume", None),
        ("POST", "/backtest", None),
    ]:
        response = http.request(method, f"/v2/alerts/{rule_id}{path}", json=body, headers=bob)
        assert_error(response, 404, "alert_not_found")

    # Change it.
    response = http.put(
        f"/v2/alerts/{rule_id}", json={"name": "drain v2", "cooldown": 60}, headers=alice
    )
    assert response.status_code == 200, response.text
    assert (response.json()["name"], response.json()["cooldown"]) == ("drain v2", 60)
    assert response.json()["condition"] == rule["condition"]
    error = assert_error(
        http.put(f"/v2/alerts/{rule_id}", json={"name": "a\u0000b"}, headers=alice),
        400,
        "invalid_rule",
    )
    assert error["details"] == {"field": "name"}
    moved = {"target": {"protocol": "other"}}
    error = assert_error(
        http.put(f"/v2/alerts/{rule_id}", json=moved, headers=alice), 400, "invalid_rule"
    )
    assert error["details"] == {"field": "target"}

    # Pause and resume.
    paused = http.post(f"/v2/alerts/{rule_id}/pause", headers=alice)
    assert paused.status_code == 200, paused.text
    assert paused.json()["state"] == "paused"
    assert_error(http.post(f"/v2/alerts/{rule_id}/pause", headers=alice), 409, "invalid_transition")
    [listed] = [
        r for r in http.get("/v2/alerts", headers=alice).json()["alerts"] if r["id"] == rule_id
    ]
    assert listed["state"] == "paused"
    assert listed["name"] == "drain v2"
    # The listing (read model) and the rule (event store) agree.
    assert listed == http.get(f"/v2/alerts/{rule_id}", headers=alice).json()
    resumed = http.post(f"/v2/alerts/{rule_id}/resume", headers=alice)
    assert resumed.json()["state"] == "active"

    # Delete.
    deleted = http.delete(f"/v2/alerts/{rule_id}", headers=alice)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": rule_id, "state": "deleted"}
    assert_error(http.get(f"/v2/alerts/{rule_id}", headers=alice), 404, "alert_not_found")
    assert_error(http.delete(f"/v2/alerts/{rule_id}", headers=alice), 404, "alert_not_found")
    assert rule_id not in listed_ids(http, alice)


def test_alerts_need_a_key_and_a_well_formed_id(http: httpx.Client, accounts: Accounts) -> None:
    assert_error(http.get("/v2/alerts"), 401, "unauthorized")
    assert_error(http.post("/v2/alerts", json={}), 401, "unauthorized")
    bad = {"X-API-Key": "drt_not-a-key"}
    assert_error(http.get("/v2/alerts", headers=bad), 401, "unauthorized")
    assert_error(http.get("/v2/alerts/not-a-uuid", headers=accounts.alice), 404, "alert_not_found")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(http.get(f"/v2/alerts/{unknown}", headers=accounts.alice), 404, "alert_not_found")


VALID = {
    "target": {"protocol": "valid-lend"},
    "condition": BELOW_1B,
    "channels": [{"kind": "websocket"}],
}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"target": {"protocol": "valid-lend", "metric": "apy"}}, "target", "target.metric"),
        ({"target": {"protocol": "x", "token": "coingecko:eth"}}, "target", "exactly one"),
        ({"target": "valid-lend"}, "target", "target must be an object"),
        (
            {"condition": {"kind": "threshold", "direction": "sideways", "value": 1}},
            "condition",
            "direction",
        ),
        (
            {"condition": {"kind": "threshold", "direction": "below", "value": -5}},
            "condition",
            "non-negative",
        ),
        (
            {"condition": {"kind": "threshold", "direction": "below", "value": "1"}},
            "condition",
            "finite number",
        ),
        ({"condition": {**DROP_20_IN_24H, "window": "2d"}}, "condition", "condition.window"),
        ({"condition": {**DROP_20_IN_24H, "value": -150}}, "condition", "below -100"),
        (
            {"condition": {"kind": "median", "direction": "below", "value": 1}},
            "condition",
            "condition.kind",
        ),
        ({"channels": []}, "channels", "non-empty"),
        ({"channels": [{"kind": "sms"}]}, "channels", "channels[0].kind"),
        ({"channels": [{"kind": "webhook", "url": "ftp://x"}]}, "channels", "http(s) URL"),
        ({"channels": [{"kind": "email", "address": "nobody"}]}, "channels", "email address"),
        (
            {"channels": [{"kind": "webhook", "url": "https://x", "secret": 7}]},
            "channels",
            "secret",
        ),
        ({"channels": [{"kind": "websocket", "headers": {}}]}, "channels", "unknown field"),
        ({"cooldown": -1}, "cooldown", "cooldown"),
        ({"cooldown": 1.5}, "cooldown", "whole number"),
        ({"name": 7}, "name", "name"),
        ({"condition": None}, "condition", "condition must be an object"),
        # Control characters: a NUL cannot be stored in the PostgreSQL read model at all.
        ({"name": "x\u0000y"}, "name", "name contains a control character (U+0000 at 1)"),
        ({"name": "\u001b[31mred"}, "name", "name contains a control character (U+001B"),
        ({"name": "c1\u009b"}, "name", "name contains a control character (U+009B"),
        ({"target": {"protocol": "Bad Slug"}}, "target", "invalid protocol slug"),  # was a 500
        ({"target": {"protocol": "valid-lend", "chain": "Base\u0000"}}, "target", "U+0000"),
        ({"target": {"protocol": "valid-lend", "chain": "Ba\u202ese"}}, "target", "U+202E"),
        (
            {"channels": [{"kind": "webhook", "url": "https://x.example/\r\nX-Evil: 1"}]},
            "channels",
            "channels[0].url contains a control character",
        ),
    ],
)
def test_invalid_rules_are_refused_with_the_reason(
    http: httpx.Client, accounts: Accounts, change: dict[str, Any], field: str, message: str
) -> None:
    before = listed_ids(http, accounts.alice)
    response = http.post("/v2/alerts", json={**VALID, **change}, headers=accounts.alice)
    error = assert_error(response, 400, "invalid_rule")
    assert error["details"] == {"field": field}
    assert message in error["message"]
    assert listed_ids(http, accounts.alice) == before


def test_malformed_bodies_and_unknown_targets(http: httpx.Client, accounts: Accounts) -> None:
    alice = accounts.alice
    missing = {"condition": BELOW_1B, "channels": [{"kind": "websocket"}]}
    error = assert_error(http.post("/v2/alerts", json=missing, headers=alice), 400, "invalid_rule")
    assert error["details"] == {"field": "target"}
    assert_error(http.post("/v2/alerts", json=[VALID], headers=alice), 400, "invalid_body")
    unknown_field = {**VALID, "owner": "bob"}
    assert_error(http.post("/v2/alerts", json=unknown_field, headers=alice), 400, "invalid_body")
    response = http.post("/v2/alerts", content=b"{not json", headers=alice)
    assert_error(response, 400, "invalid_json")
    typo = {**VALID, "target": {"protocol": "aave-v33"}}
    error = assert_error(http.post("/v2/alerts", json=typo, headers=alice), 422, "unknown_target")
    assert "aave-v33" in error["message"]


# --- evaluation reaches the owner's socket -------------------------------------------------


@asynccontextmanager
async def alerts_socket(
    server: LiveServer, headers: dict[str, str]
) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(server.ws_url, additional_headers=headers, open_timeout=5)
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


async def test_a_drop_alerts_the_owner_and_nobody_else(accounts: Accounts) -> None:
    server, alice, bob = accounts.server, accounts.alice, accounts.bob
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as ahttp:
        items = [
            obs("drop-lend", 100e6, T0 - DAY, name="Drop Lend"),
            obs("calm-lend", 5e6, T0, name="Calm"),
        ]
        assert (
            await ahttp.post("/v2/ingest", json={"observations": items}, headers=alice)
        ).status_code == 200
        body = {
            "target": {"protocol": "drop-lend"},
            "condition": DROP_20_IN_24H,
            "channels": [{"kind": "websocket"}],
            "cooldown": 0,
        }
        response = await ahttp.post("/v2/alerts", json=body, headers=alice)
        assert response.status_code == 200, response.text
        rule_id = response.json()["id"]
        # Bob watches another protocol, which does not move.
        bobs = {**body, "target": {"protocol": "calm-lend"}}
        assert (await ahttp.post("/v2/alerts", json=bobs, headers=bob)).status_code == 200

        async with alerts_socket(server, alice) as alice_ws, alerts_socket(server, bob) as bob_ws:
            drop = {"observations": [obs("drop-lend", 70e6, T0)]}  # -30% within 24h
            assert (await ahttp.post("/v2/ingest", json=drop, headers=alice)).status_code == 200
            frame = await next_alert(alice_ws)
            assert frame["alertId"] == rule_id
            assert frame["condition"] == "firing"
            assert frame["timestamp"] == T0
            assert frame["data"]["measure"] == pytest.approx(-30.0)
            assert frame["data"]["idempotencyKey"] == f"{rule_id}:1"
            assert isinstance(frame["position"], int)
            with pytest.raises(TimeoutError):
                await next_alert(bob_ws, timeout=0.5)

            recovered = {"observations": [obs("drop-lend", 100e6, T0 + DAY)]}
            assert (
                await ahttp.post("/v2/ingest", json=recovered, headers=alice)
            ).status_code == 200
            frame = await next_alert(alice_ws)
            assert (frame["alertId"], frame["condition"]) == (rule_id, "resolved")

        rule = (await ahttp.get(f"/v2/alerts/{rule_id}", headers=alice)).json()
        assert (rule["firing"], rule["last_fired_at"]) == ("resolved", T0)


# --- backtest ------------------------------------------------------------------------------


def test_backtest_endpoint(http: httpx.Client, accounts: Accounts) -> None:
    alice = accounts.alice
    values = [100.0, 100.0, 70.0, 65.0, 66.0, 40.0, 41.0]
    items = [
        obs("bt-lend", v * 1e6, T0 + i * DAY, name="Backtest Lend") for i, v in enumerate(values)
    ]
    assert http.post("/v2/ingest", json={"observations": items}, headers=alice).status_code == 200
    settle(http)
    rule = create(http, alice, "bt-lend", condition=DROP_20_IN_24H, cooldown=0)
    path = f"/v2/alerts/{rule['id']}/backtest"

    response = http.post(path, headers=alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["alertId"] == rule["id"]
    assert body["points"] == len(values)
    assert [(e["state"], e["observed_at"]) for e in body["events"]] == [
        ("firing", T0 + 2 * DAY),
        ("resolved", T0 + 3 * DAY),
        ("firing", T0 + 5 * DAY),
        ("resolved", T0 + 6 * DAY),
    ]
    assert body["events"][0]["measure"] == pytest.approx(-30.0)

    window = {"start": T0 + 4 * DAY, "end": datetime.fromtimestamp(T0 + 5 * DAY, UTC).isoformat()}
    response = http.post(path, json=window, headers=alice)
    assert response.status_code == 200, response.text
    assert [(e["state"], e["observed_at"]) for e in response.json()["events"]] == [
        ("firing", T0 + 5 * DAY)
    ]
    assert response.json()["points"] == 2

    assert_error(http.post(path, json={"start": "yesterday"}, headers=alice), 400, "invalid_body")
    assert_error(
        http.post(path, json={"start": T0 + DAY, "end": T0}, headers=alice), 400, "invalid_body"
    )
    assert_error(http.post(path, json={"step": 1}, headers=alice), 400, "invalid_body")
    # true is not a time (it was read as 1.0), whereas an RFC 3339 date-time may be lower case.
    assert_error(http.post(path, json={"start": True}, headers=alice), 400, "invalid_body")
    lower = {"start": window["end"].lower(), "end": window["end"]}
    assert http.post(path, json=lower, headers=alice).json()["points"] == 1
    # Backtesting does not record anything.
    assert http.get(f"/v2/alerts/{rule['id']}", headers=alice).json()["firing"] == "resolved"


# --- the real data: TVL crashes -------------------------------------------------------------


def cli_env(data_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL"}
    }
    env.update({"DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    return env


def run_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [CLI, *args],
        env=cli_env(data_dir),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def days(events: list[dict[str, Any]], state: str) -> list[str]:
    return [
        datetime.fromtimestamp(e["observed_at"], UTC).date().isoformat()
        for e in events
        if e["state"] == state
    ]


def test_backtest_finds_real_tvl_crashes(tmp_path: Path) -> None:
    """Solend (`save`) lost half its TVL in a day when FTX collapsed (2022-11-09) and
    another fifth on 2025-10-23; Aries Markets lost 95% on 2023-12-16. The days were
    found in the data first: the daily drops of at least 20% in tvl-history.jsonl.gz."""
    data_dir = tmp_path / "data"
    run_cli(data_dir, "ingest", str(require_file(REAL_HISTORY)))

    inline = [
        "--metric", "tvl", "--condition", "pct_change", "--direction", "below",
        "--value", "-20", "--window", "24h",
    ]  # fmt: skip
    result = run_cli(data_dir, "alerts", "backtest", "--protocol", "save", *inline)
    backtested = json.loads(result.stdout)
    assert days(backtested["events"], "firing") == ["2022-11-09", "2025-10-23"]
    assert days(backtested["events"], "resolved") == ["2022-11-11", "2025-10-24"]
    assert backtested["events"][0]["measure"] == pytest.approx(-49.05, abs=0.01)
    assert backtested["points"] > 1_500
    assert "2022-11-09" in result.stderr  # the table, beside the progress

    # A stored rule, by id, with a time range.
    app = DefiRealtime(env=Settings(data_dir=data_dir).event_store_env)
    try:
        rule_id = app.create_alert_rule(
            "ops", {"protocol": "aries-markets"}, DROP_20_IN_24H, [{"kind": "websocket"}], 3_600
        )
    finally:
        app.close()
    result = run_cli(
        data_dir, "alerts", "backtest", "--rule", str(rule_id),
        "--start", "2023-01-01", "--end", "2024-12-31",
    )  # fmt: skip
    stored = json.loads(result.stdout)
    assert stored["rule"] == str(rule_id)
    assert days(stored["events"], "firing") == ["2023-12-16"]


def test_worker_alerts_evaluates_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps(obs("worker-lend", 2e9, T0, name="Worker Lend")) + "\n")
    run_cli(data_dir, "ingest", str(first))
    app = DefiRealtime(env=Settings(data_dir=data_dir).event_store_env)
    try:
        rule_id = app.create_alert_rule(
            "ops", {"protocol": "worker-lend"}, BELOW_1B, [{"kind": "websocket"}], 0
        )
    finally:
        app.close()
    drop = tmp_path / "drop.jsonl"
    drop.write_text(json.dumps(obs("worker-lend", 5e8, T0 + 60)) + "\n")
    run_cli(data_dir, "ingest", str(drop))

    log_file = tmp_path / "worker.log"
    with log_file.open("w") as log:
        worker = subprocess.Popen(
            [CLI, "worker", "alerts"], env=cli_env(data_dir), stdout=log, stderr=log
        )
    try:
        app = DefiRealtime(env=Settings(data_dir=data_dir).event_store_env)
        try:
            deadline = time.monotonic() + 30
            while app.get_alert_rule(rule_id, "ops").firing != "firing":
                assert worker.poll() is None, log_file.read_text()
                assert time.monotonic() < deadline, log_file.read_text()
                time.sleep(0.1)
            rule = app.get_alert_rule(rule_id, "ops")  # fresh, not the cached copy
            assert (rule.last_fired_at, rule.transitions) == (T0 + 60, 1)
        finally:
            app.close()
    finally:
        worker.terminate()
        worker.wait(timeout=15)
    assert "worker alerts running" in log_file.read_text()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"token": ""}, "invalid token id"),
        ({"protocol": "Bad Slug"}, "invalid protocol slug"),
        ({"protocol": "valid-lend", "chain": "   "}, "target.chain"),
        ({"protocol": ""}, "invalid protocol slug"),
    ],
)
def test_a_malformed_target_is_a_400_on_create_and_on_replace(
    http: httpx.Client, accounts: Accounts, target: dict[str, Any], message: str
) -> None:
    list_protocols(http, accounts, "valid-lend")
    body = {**VALID, "target": target}
    error = assert_error(
        http.post("/v2/alerts", json=body, headers=accounts.alice), 400, "invalid_rule"
    )
    assert error["details"] == {"field": "target"}
    assert message in error["message"]
    rule_id = create(http, accounts.alice, "valid-lend")["id"]
    response = http.put(f"/v2/alerts/{rule_id}", json={"target": target}, headers=accounts.alice)
    error = assert_error(response, 400, "invalid_rule")
    assert error["details"] == {"field": "target"}


def test_replacing_a_target_with_the_same_one_changes_nothing(
    http: httpx.Client, accounts: Accounts
) -> None:
    list_protocols(http, accounts, "same-target")
    rule = create(http, accounts.alice, "same-target")
    same = {"target": {"protocol": "same-target", "metric": "tvl", "chain": "total"}}
    response = http.put(f"/v2/alerts/{rule['id']}", json=same, headers=accounts.alice)
    assert response.status_code == 200, response.text
    assert response.json()["updated_at"] == rule["updated_at"]


async def test_concurrent_creations_cannot_exceed_the_tier_quota(accounts: Accounts) -> None:
    # A free key holds at most 5 rules. With one place left, five creations racing for it:
    # exactly one wins (the quota is checked where the rule is saved, not before).
    free = {"X-API-Key": _issue_tier(accounts.server.settings, "racer", "free")}
    async with httpx.AsyncClient(base_url=accounts.server.base_url, timeout=20.0) as client:
        listed = await client.post(
            "/v2/ingest",
            json={"observations": [obs("quota-lend", 2e9, T0, name="Quota Lend")]},
            headers=accounts.alice,
        )
        assert listed.status_code == 200, listed.text
        body = {**VALID, "target": {"protocol": "quota-lend"}}
        for _ in range(4):
            response = await client.post("/v2/alerts", json=body, headers=free)
            assert response.status_code == 200, response.text
        racing = await asyncio.gather(
            *(client.post("/v2/alerts", json=body, headers=free) for _ in range(5))
        )
        statuses = sorted(response.status_code for response in racing)
        assert statuses == [200, 403, 403, 403, 403], [r.text for r in racing]
        for response in racing:
            if response.status_code == 403:
                assert response.json()["error"]["code"] == "alert_rule_limit"
                assert response.json()["error"]["details"] == {"limit": 5}
        listing = (await client.get("/v2/alerts", headers=free)).json()
        assert listing["total"] == 5
        # A deleted rule frees its place.
        await client.delete(f"/v2/alerts/{listing['alerts'][0]['id']}", headers=free)
        again = await client.post("/v2/alerts", json=body, headers=free)
        assert again.status_code == 200, again.text


def _issue_tier(settings: Settings, name: str, tier: str) -> str:
    app = DefiRealtime(env=settings.event_store_env)
    try:
        return app.issue_api_key(name=name, tier=tier)
    finally:
        app.close()
