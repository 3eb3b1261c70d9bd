"""Accounts and keys end to end (issue 13, part 1), on the embedded adapters and on
PostgreSQL + Redis + RabbitMQ: accounts never share by name, a revoked key's sockets close
within a second and REST refuses it, Bearer keys and session tokens, IP allow-lists.

Keys are made, revoked and rotated through an application object on the server's own event
store, as the ``keys`` commands do (tests/e2e/test_cli.py runs the commands themselves).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from defi_realtime.application.app import DefiRealtime
from tests.e2e.conftest import LiveServer, assert_error, obs, start_server

BACKENDS = ("embedded", "production")
FRAME_TIMEOUT = 5.0
# The issue's bound: a revoked key's open sockets are closed within a second.
REVOCATION_BOUND = 1.0
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1e9}


@contextmanager
def application(server: LiveServer) -> Iterator[DefiRealtime]:
    """The server's event store, as an operator command opens it."""
    app = DefiRealtime(env=server.settings.event_store_env)
    try:
        yield app
    finally:
        app.close()


def issue(server: LiveServer, name: str, **options: Any) -> str:
    with application(server) as app:
        return app.issue_api_key(name, **options)


@asynccontextmanager
async def opened_socket(
    server: LiveServer, *, url: str | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(
            url or server.ws_url, additional_headers=headers, open_timeout=5, close_timeout=2
        )
    try:
        await ws.send(json.dumps({"type": "ping"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
        assert frame["type"] == "pong"
        yield ws
    finally:
        await ws.close()


async def closed_with(ws: ClientConnection, timeout: float) -> int | None:
    """The close code the server sends within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def refused_handshake(
    server: LiveServer, url: str, headers: dict[str, str] | None = None
) -> int:
    """The close code (or HTTP status) a handshake is refused with."""
    try:
        async with asyncio.timeout(10):
            async with connect(url, additional_headers=headers, open_timeout=5) as ws:
                await ws.recv()
    except InvalidStatus as error:
        return int(error.response.status_code)
    except ConnectionClosed as error:
        return -1 if error.rcvd is None else int(error.rcvd.code)
    raise AssertionError("the handshake was not refused")


async def next_alert(ws: ClientConnection, timeout: float) -> dict[str, Any] | None:
    """The next alert frame within ``timeout``, or None."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                frame: dict[str, Any] = json.loads(await ws.recv())
                if frame["type"] == "alert":
                    return frame
    except TimeoutError:
        return None


# --- two accounts never see each other's rules or alerts --------------------------------


async def test_keys_with_the_same_name_are_separate_accounts(server: LiveServer) -> None:
    first = {"X-API-Key": issue(server, "twin", tier="pro")}
    second = {"X-API-Key": issue(server, "twin", tier="pro")}
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        listed = {"observations": [obs("twin-lend", 2e9, time.time() - 60, name="Twin Lend")]}
        assert (await http.post("/v2/ingest", json=listed, headers=first)).status_code == 200
        rule = {
            "target": {"protocol": "twin-lend"},
            "condition": BELOW_1B,
            "channels": [{"kind": "websocket"}],
            "cooldown": 0,
        }
        created = await http.post("/v2/alerts", json=rule, headers=first)
        assert created.status_code == 200, created.text
        rule_id = created.json()["id"]

        # The other account neither lists, reads, changes nor deletes it.
        assert (await http.get("/v2/alerts", headers=second)).json()["alerts"] == []
        assert (await http.get(f"/v2/alerts/{rule_id}", headers=second)).status_code == 404
        renamed = await http.put(f"/v2/alerts/{rule_id}", json={"name": "x"}, headers=second)
        assert renamed.status_code == 404
        assert (await http.delete(f"/v2/alerts/{rule_id}", headers=second)).status_code == 404
        assert [
            item["id"] for item in (await http.get("/v2/alerts", headers=first)).json()["alerts"]
        ] == [rule_id]

        # Its alert reaches its own socket only.
        async with (
            opened_socket(server, headers=first) as mine,
            opened_socket(server, headers=second) as theirs,
        ):
            for ws in (mine, theirs):
                await ws.send(json.dumps({"type": "subscribe", "channel": "alerts"}))
                frame = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
                assert frame["type"] == "subscribed"
            drop = {"observations": [obs("twin-lend", 5e8, time.time())]}
            assert (await http.post("/v2/ingest", json=drop, headers=first)).status_code == 200
            frame = await next_alert(mine, FRAME_TIMEOUT)
            assert frame is not None
            assert frame["alertId"] == rule_id
            assert await next_alert(theirs, 0.5) is None


# --- revocation and rotation --------------------------------------------------------------


async def test_a_revoked_key_is_cut_off_within_a_second(server: LiveServer) -> None:
    doomed = issue(server, "doomed")
    rotated = issue(server, "rotated")
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        token = (await http.post("/v2/auth/token", headers={"X-API-Key": doomed})).json()["token"]
        assert (await http.get("/v2/alerts", headers={"X-API-Key": doomed})).status_code == 200
        async with (
            opened_socket(server, headers={"X-API-Key": doomed}) as by_header,
            opened_socket(server, url=f"{server.ws_url}?token={token}") as by_token,
            opened_socket(server, headers={"Authorization": f"Bearer {rotated}"}) as old,
        ):
            with application(server) as app:
                successor = app.rotate_api_key(rotated, grace=1.5)
                app.revoke_api_key(doomed)
                revoked_at = time.monotonic()
            codes = await asyncio.gather(
                closed_with(by_header, REVOCATION_BOUND + 0.5),
                closed_with(by_token, REVOCATION_BOUND + 0.5),
            )
            elapsed = time.monotonic() - revoked_at
            assert codes == [4001, 4001]
            assert elapsed < REVOCATION_BOUND, f"closed {elapsed:.2f}s after the revocation"
            # REST refuses it (and its tokens) from now on: no cache window.
            for headers in ({"X-API-Key": doomed}, {"Authorization": f"Bearer {token}"}):
                refused = await http.get("/v2/alerts", headers=headers)
                assert_error(refused, 401, "unauthorized")
            assert await refused_handshake(server, f"{server.ws_url}?token={token}") in (
                4001,
                403,
            )

            # The rotated-out key works through its grace period, then its socket closes.
            old_key = {"X-API-Key": rotated}
            assert (await http.get("/v2/alerts", headers=old_key)).status_code == 200
            await old.send(json.dumps({"type": "ping"}))
            assert json.loads(await asyncio.wait_for(old.recv(), FRAME_TIMEOUT))["type"] == "pong"
            assert await closed_with(old, 1.5 + REVOCATION_BOUND + 0.5) == 4001
            assert_error(await http.get("/v2/alerts", headers=old_key), 401, "unauthorized")
            new_key = {"X-API-Key": successor}
            assert (await http.get("/v2/alerts", headers=new_key)).status_code == 200


async def test_revocation_closes_sockets_of_the_asgi_transport_too(tmp_path: Any) -> None:
    with start_server(tmp_path / "data", ws="auto") as server:
        key = issue(server, "asgi")
        async with opened_socket(server, headers={"X-API-Key": key}) as ws:
            with application(server) as app:
                app.revoke_api_key(key)
                revoked_at = time.monotonic()
            assert await closed_with(ws, REVOCATION_BOUND + 0.5) == 4001
            assert time.monotonic() - revoked_at < REVOCATION_BOUND


# --- Bearer, session tokens, IP allow-lists ---------------------------------------------


async def test_bearer_keys_session_tokens_and_ip_allow_lists(server: LiveServer) -> None:
    key = server.api_key
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        bearer = {"Authorization": f"Bearer {key}"}
        assert (await http.get("/v2/alerts", headers=bearer)).status_code == 200
        minted = await http.post("/v2/auth/token", headers=bearer)
        assert minted.status_code == 200, minted.text
        answer = minted.json()
        assert answer["token_type"] == "Bearer"
        assert 0 < answer["expires_in"] <= server.settings.session_token_ttl
        token = answer["token"]
        assert key not in token  # the token names the key by id only
        as_token = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/v2/alerts", headers=as_token)).status_code == 200
        # A token does not mint the next one; nobody mints without a key.
        assert_error(await http.post("/v2/auth/token", headers=as_token), 403, "key_required")
        assert_error(await http.post("/v2/auth/token"), 401, "unauthorized")
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert_error(
            await http.get("/v2/alerts", headers={"Authorization": f"Bearer {forged}"}),
            401,
            "unauthorized",
        )
        # On the WebSocket handshake: ?token=, and the key in a Bearer header.
        async with opened_socket(server, url=f"{server.ws_url}?token={token}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": "alerts"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
            assert (frame["type"], frame["channel"]) == ("subscribed", "alerts")
        async with opened_socket(server, headers=bearer):
            pass
        assert await refused_handshake(server, f"{server.ws_url}?token={forged}") in (4001, 403)
    await _allow_lists(server)


async def _allow_lists(server: LiveServer) -> None:
    """IP allow-lists (enterprise keys): from elsewhere, 403 and 4003."""
    elsewhere = issue(server, "vpn-only", tier="enterprise", allowed_ips=["10.0.0.0/8"])
    here = issue(server, "office", tier="enterprise", allowed_ips=["127.0.0.0/8", "::1"])
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        refused = await http.get("/v2/alerts", headers={"X-API-Key": elsewhere})
        assert_error(refused, 403, "forbidden")
        # A session token of the key is bound by the same list.
        assert_error(
            await http.post("/v2/auth/token", headers={"X-API-Key": elsewhere}), 403, "forbidden"
        )
        assert (await http.get("/v2/alerts", headers={"X-API-Key": here})).status_code == 200
        # Without TRUSTED_PROXIES a forwarding header changes nothing.
        spoofed = {"X-API-Key": elsewhere, "X-Forwarded-For": "10.1.2.3"}
        assert_error(await http.get("/v2/alerts", headers=spoofed), 403, "forbidden")
    # On the handshake: 4003, whichever way the key comes.
    assert await refused_handshake(server, server.ws_url, {"X-API-Key": elsewhere}) == 4003
    assert await refused_handshake(server, f"{server.ws_url}?api_key={elsewhere}") == 4003
    async with opened_socket(server, headers={"X-API-Key": here}):
        pass
