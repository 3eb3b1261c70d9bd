"""Rate limits end to end (ADR 0036): the real server with ``rate_limits=True`` and small
budgets, on the embedded limiter and on Redis; two nodes sharing Redis share a budget."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from defi_realtime.application.realtime import CLOSE_TOO_MANY_CONNECTIONS
from defi_realtime.domain.api_key import TIER_LIMITS
from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol
from tests.e2e.conftest import assert_error, production_settings, start_server

FREE = TIER_LIMITS["free"].requests_per_minute
TRANSPORTS = [
    pytest.param(RealtimeWebSocketProtocol, id="lean"),
    pytest.param("auto", id="asgi"),
]


@pytest.fixture(params=["embedded", "production"])
def deployment(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Settings overrides: the in-process limiter, or Redis (with PostgreSQL and RabbitMQ)."""
    if request.param == "embedded":
        yield {}
        return
    with production_settings() as overrides:
        yield overrides


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Any:
    return request.param


@asynccontextmanager
async def socket_to(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(url, open_timeout=5, close_timeout=2, **kwargs)
    try:
        yield ws
    finally:
        await ws.close()


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(3):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def refused_code(url: str, **kwargs: Any) -> int:
    """The close code (or, refused before the upgrade by the ASGI transport, the HTTP
    status) of a handshake the server refuses."""
    with pytest.raises((InvalidStatus, ConnectionClosed)) as refused:
        async with socket_to(url, **kwargs) as ws:
            await recv(ws)
    if isinstance(refused.value, InvalidStatus):
        return refused.value.response.status_code
    assert refused.value.rcvd is not None
    return refused.value.rcvd.code


def test_a_free_key_is_throttled_at_its_tiers_rate_with_the_headers(
    tmp_path: Path, deployment: dict[str, Any]
) -> None:
    with (
        start_server(tmp_path / "data", rate_limits=True, **deployment) as live,
        httpx.Client(base_url=live.base_url, timeout=10.0) as http,
    ):
        for spent in range(1, FREE + 1):
            answer = http.get("/v2/protocols", headers=live.headers)
            assert answer.status_code == 200, answer.text
            assert answer.headers["RateLimit-Policy"] == f'"tier-free";q={FREE};w=60'
            assert answer.headers["RateLimit"].startswith(f'"tier-free";r={FREE - spent};t=')
            assert "Retry-After" not in answer.headers
        refused = http.get("/v2/protocols", headers=live.headers)
        error = assert_error(refused, 429, "rate_limited")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert refused.headers["RateLimit-Policy"] == f'"tier-free";q={FREE};w=60'
        assert refused.headers["RateLimit"] == f'"tier-free";r=0;t={retry_after}'
        assert error["details"] == {
            "policy": "tier-free",
            "limit": FREE,
            "window": 60,
            "remaining": 0,
            "reset": retry_after,
            "retryAfter": retry_after,
        }
        # Writes spend the same budget; probes and scrapes spend none.
        assert_error(http.post("/v2/ingest", headers=live.headers, json={}), 429, "rate_limited")
        for path in ("/health", "/health/live", "/metrics"):
            exempt = http.get(path, headers=live.headers)
            assert exempt.status_code == 200, path
            assert "RateLimit" not in exempt.headers
        # Another caller has its own budget.
        anonymous = http.get("/v2/protocols")
        assert anonymous.status_code == 200
        assert anonymous.headers["RateLimit-Policy"] == '"anonymous";q=120;w=60'


def test_two_nodes_sharing_redis_share_budgets_and_anonymous_sockets(tmp_path: Path) -> None:
    with (
        production_settings() as overrides,
        start_server(
            tmp_path / "a", rate_limits=True, ws_anonymous_sockets=2, **overrides
        ) as first,
        start_server(
            tmp_path / "b", first.api_key, rate_limits=True, ws_anonymous_sockets=2, **overrides
        ) as second,
        httpx.Client(timeout=10.0) as http,
    ):
        asyncio.run(anonymous_sockets_are_counted_across_nodes(first.ws_url, second.ws_url))
        nodes = (first.base_url, second.base_url)
        for spent in range(1, FREE + 1):
            answer = http.get(f"{nodes[spent % 2]}/v2/protocols", headers=first.headers)
            assert answer.status_code == 200, answer.text
            assert answer.headers["RateLimit"].startswith(f'"tier-free";r={FREE - spent};t=')
        for base_url in nodes:
            refused = http.get(f"{base_url}/v2/protocols", headers=first.headers)
            assert_error(refused, 429, "rate_limited")
            assert int(refused.headers["Retry-After"]) >= 1


async def anonymous_sockets_are_counted_across_nodes(first: str, second: str) -> None:
    """Two anonymous sockets from one address on two nodes: the address's cap of 2 holds on
    both (ADR 0049), and a socket closed on one node frees its slot on the other."""
    async with socket_to(first) as on_first:
        async with socket_to(second) as on_second:
            for ws in (on_first, on_second):
                await ws.send(json.dumps({"type": "ping"}))
                assert (await recv(ws))["type"] == "pong"
            for url in (first, second):
                assert await refused_code(url) in (CLOSE_TOO_MANY_CONNECTIONS, 403)
        # The server reads the close frame, then gives the slot back in Redis.
        async with asyncio.timeout(2):
            while True:
                try:
                    async with socket_to(first) as again:
                        await again.send(json.dumps({"type": "ping"}))
                        assert (await recv(again))["type"] == "pong"
                        break
                except (InvalidStatus, ConnectionClosed):
                    await asyncio.sleep(0.02)


def test_anonymous_callers_are_limited_per_client_address(tmp_path: Path) -> None:
    with (
        start_server(
            tmp_path / "data",
            rate_limits=True,
            rate_limit_anonymous=3,
            trusted_proxies="127.0.0.1",
        ) as live,
        httpx.Client(base_url=live.base_url, timeout=10.0) as http,
    ):
        client_a = {"X-Forwarded-For": "203.0.113.7"}
        # A hop the client wrote itself before the proxy's is not evidence: still client b.
        client_b = {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"}
        for spent in range(1, 4):
            answer = http.get("/v2/protocols", headers=client_a)
            assert answer.status_code == 200
            assert answer.headers["RateLimit"].startswith(f'"anonymous";r={3 - spent};t=')
        assert_error(http.get("/v2/protocols", headers=client_a), 429, "rate_limited")
        assert_error(http.get("/protocols", headers=client_a), 429, "rate_limited")
        answer = http.get("/v2/protocols", headers=client_b)
        assert answer.status_code == 200
        assert answer.headers["RateLimit"].startswith('"anonymous";r=2;t=')
        # A key is its own caller, whatever its address.
        assert http.get("/v2/protocols", headers={**client_a, **live.headers}).status_code == 200


async def test_repeated_authentication_failures_are_throttled_even_for_a_valid_key(
    tmp_path: Path,
) -> None:
    with start_server(
        tmp_path / "data",
        rate_limits=True,
        rate_limit_auth_failures=3,
        trusted_proxies="127.0.0.1",
    ) as live:
        attacker = {"X-Forwarded-For": "203.0.113.66"}
        async with httpx.AsyncClient(base_url=live.base_url, timeout=10.0) as http:
            for n in range(3):
                wrong = {**attacker, "X-API-Key": f"drt_wrong-{n}"}
                assert_error(await http.get("/v2/protocols", headers=wrong), 401, "unauthorized")
            blocked = await http.get(
                "/v2/protocols", headers={**attacker, "X-API-Key": "drt_wrong-3"}
            )
            error = assert_error(blocked, 429, "rate_limited")
            assert error["details"]["policy"] == "auth-failures"
            assert blocked.headers["RateLimit-Policy"] == '"auth-failures";q=3;w=60'
            assert int(blocked.headers["Retry-After"]) >= 1
            # The valid key from that address too, on REST and on a WebSocket handshake.
            valid = {**attacker, **live.headers}
            assert_error(await http.get("/v2/protocols", headers=valid), 429, "rate_limited")
            assert (
                await refused_code(live.ws_url, additional_headers=valid)
                == CLOSE_TOO_MANY_CONNECTIONS
            )
            # Another address is not affected.
            other = {"X-Forwarded-For": "203.0.113.67", **live.headers}
            assert (await http.get("/v2/protocols", headers=other)).status_code == 200


async def test_wrong_keys_on_websocket_handshakes_count_as_failures(
    tmp_path: Path, transport: Any
) -> None:
    with start_server(
        tmp_path / "data", ws=transport, rate_limits=True, rate_limit_auth_failures=2
    ) as live:
        for n in range(2):
            wrong = {"X-API-Key": f"drt_wrong-{n}"}
            assert await refused_code(live.ws_url, additional_headers=wrong) in (4001, 403)
        async with httpx.AsyncClient(base_url=live.base_url, timeout=10.0) as http:
            refused = await http.get("/v2/protocols", headers=live.headers)
            assert_error(refused, 429, "rate_limited")


async def test_websocket_messages_are_limited_in_order_with_the_facts(
    tmp_path: Path, transport: Any
) -> None:
    with start_server(
        tmp_path / "data", ws=transport, rate_limits=True, rate_limit_anonymous=3
    ) as live:
        async with socket_to(live.ws_url) as ws:
            # Sent at once: answered in order, the fourth and fifth refused.
            for n in range(5):
                await ws.send(json.dumps({"type": "ping", "id": n}))
            frames = [await recv(ws) for _ in range(5)]
            assert [frame["type"] for frame in frames] == ["pong"] * 3 + ["error"] * 2
            assert [frame["id"] for frame in frames[:3]] == [0, 1, 2]
            refusal = frames[3]
            assert refusal["code"] == "rate_limited"
            assert (refusal["policy"], refusal["limit"], refusal["window"]) == ("anonymous", 3, 60)
            assert refusal["remaining"] == 0
            assert 1 <= refusal["retryAfter"] <= 60
            assert refusal["reset"] == refusal["retryAfter"]
            # The socket stays up, refused; REST has its own budget.
            await ws.send(json.dumps({"type": "subscribe", "channel": "protocols"}))
            assert (await recv(ws))["code"] == "rate_limited"
        async with httpx.AsyncClient(base_url=live.base_url, timeout=10.0) as http:
            assert (await http.get("/v2/protocols")).status_code == 200


async def test_websocket_messages_of_a_key_spend_its_tiers_budget_and_subscriptions_are_capped(
    tmp_path: Path, transport: Any
) -> None:
    free = TIER_LIMITS["free"]
    with start_server(tmp_path / "data", ws=transport, rate_limits=True) as live:
        async with socket_to(live.ws_url, additional_headers=live.headers) as ws:
            for _ in range(free.subscriptions_per_connection):
                await ws.send(json.dumps({"type": "subscribe", "channel": "protocols"}))
                assert (await recv(ws))["type"] == "subscribed"
            await ws.send(json.dumps({"type": "subscribe", "channel": "protocols"}))
            assert (await recv(ws))["code"] == "too_many_subscriptions"
            spent = free.subscriptions_per_connection + 1
            for _ in range(free.requests_per_minute - spent):
                await ws.send(json.dumps({"type": "ping"}))
            for _ in range(free.requests_per_minute - spent):
                assert (await recv(ws))["type"] == "pong"
            await ws.send(json.dumps({"type": "ping"}))
            refusal = await recv(ws)
            assert (refusal["code"], refusal["policy"]) == ("rate_limited", "tier-free")


async def test_concurrent_anonymous_sockets_are_limited_per_address(
    tmp_path: Path, transport: Any
) -> None:
    with start_server(
        tmp_path / "data", ws=transport, rate_limits=True, ws_anonymous_sockets=2
    ) as live:
        async with socket_to(live.ws_url) as first, socket_to(live.ws_url) as second:
            for ws in (first, second):
                await ws.send(json.dumps({"type": "ping"}))
                assert (await recv(ws))["type"] == "pong"
            assert await refused_code(live.ws_url) in (CLOSE_TOO_MANY_CONNECTIONS, 403)
            # A key is not counted against the address.
            async with socket_to(live.ws_url, additional_headers=live.headers) as keyed:
                await keyed.send(json.dumps({"type": "ping"}))
                assert (await recv(keyed))["type"] == "pong"
        # Closed sockets give their places back (the server notices the close first).
        async with asyncio.timeout(5):
            while True:
                try:
                    async with socket_to(live.ws_url) as again:
                        await again.send(json.dumps({"type": "ping"}))
                        assert (await recv(again))["type"] == "pong"
                        break
                except (InvalidStatus, ConnectionClosed):
                    await asyncio.sleep(0.05)
