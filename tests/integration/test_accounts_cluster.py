"""Revocation on two ``serve`` nodes sharing PostgreSQL, Redis and RabbitMQ: the
``Revoked`` event reaches every node through its follower, so a socket on one node closes
(4001) within a second and every node's REST refuses the key, with no cache window; a
session token minted on one node works on the other (see ``cluster.py``)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.integration.cluster import stack

REVOCATION_BOUND = 1.0


async def _pong(ws: ClientConnection) -> None:
    await ws.send(json.dumps({"type": "ping"}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert frame["type"] == "pong"


async def _close_code(ws: ClientConnection, timeout: float) -> int | None:
    try:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def _status_within_bound(
    rest: httpx.AsyncClient, credentials: dict[str, str], revoked_at: float
) -> int:
    """``GET /v2/alerts``'s status: 401 as soon as it comes, else the last one asked before
    ``REVOCATION_BOUND`` passed since ``revoked_at``."""
    deadline = revoked_at + REVOCATION_BOUND
    status = (await rest.get("/v2/alerts", headers=credentials)).status_code
    while status != 401 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
        status = (await rest.get("/v2/alerts", headers=credentials)).status_code
    return status


async def test_a_revocation_reaches_every_node_at_once(tmp_path: Path) -> None:
    async with stack(tmp_path) as deployment:
        node_a, node_b = await asyncio.gather(
            deployment.serve("node-a"), deployment.serve("node-b")
        )
        key = await asyncio.to_thread(deployment.app().issue_api_key, "it")
        headers = {"X-API-Key": key}
        async with (
            httpx.AsyncClient(base_url=node_a.base_url, timeout=10) as rest_a,
            httpx.AsyncClient(base_url=node_b.base_url, timeout=10) as rest_b,
        ):
            token = (await rest_a.post("/v2/auth/token", headers=headers)).json()["token"]
            for rest in (rest_a, rest_b):
                assert (await rest.get("/v2/alerts", headers=headers)).status_code == 200
            async with (
                connect(node_b.ws_url, additional_headers=headers, open_timeout=5) as by_key,
                connect(f"{node_b.ws_url}?token={token}", open_timeout=5) as by_token,
            ):
                await _pong(by_key)
                await _pong(by_token)  # minted on node A, accepted on node B

                await asyncio.to_thread(deployment.app().revoke_api_key, key)
                revoked_at = time.monotonic()
                codes = await asyncio.gather(
                    _close_code(by_key, REVOCATION_BOUND + 1),
                    _close_code(by_token, REVOCATION_BOUND + 1),
                )
                elapsed = time.monotonic() - revoked_at
            assert codes == [4001, 4001]
            assert elapsed < REVOCATION_BOUND, f"closed {elapsed:.2f}s after the revocation"
            # Each node forgets the key when its own follower has the event: node A, with
            # no socket to close, within the same bound (a few ms after node B, at times).
            bearer = {"Authorization": f"Bearer {token}"}
            for rest in (rest_a, rest_b):
                for credentials in (headers, bearer):
                    status = await _status_within_bound(rest, credentials, revoked_at)
                    assert status == 401, f"{rest.base_url} still answers {status}"
