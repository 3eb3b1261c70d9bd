"""Rate limits on the HTTP API (ADR 0036): who a caller is for the limiter, the IETF
``RateLimit-Policy`` / ``RateLimit`` headers, and two ASGI middlewares.

``ThrottleAuthFailures`` sits before authentication: an address with too many failed
authentications (401 answers) in the last minute is answered 429 to any attempt to
authenticate, a would-be-valid key included, until its window frees (its anonymous reads
keep their own budget). ``LimitRequests`` sits after
authentication and spends the caller's budget: a key's by its tier, an anonymous
caller's by its address. Every limited answer carries the headers; a refusal is a 429 with
``Retry-After`` and the error ``rate_limited``. ``/health``, ``/health/*`` and ``/metrics``
are never limited: probes and scrapers must see a node as it is.

The client address is the peer's, or behind a proxy listed in ``TRUSTED_PROXIES`` the
nearest ``X-Forwarded-For`` address that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Final

from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..application.rate_limiting import RateLimits
from ..application.rate_limits import Quota, Verdict
from ..application.realtime import CLOSE_TOO_MANY_CONNECTIONS as CLOSE_RATE_LIMITED
from .auth import KeyHolder
from .client_address import FORWARDED_FOR, client_address
from .errors import error_response

__all__ = [
    "EXEMPT_PATHS",
    "LimitRequests",
    "ThrottleAuthFailures",
    "TrustedProxies",
    "limit_headers",
    "marking_failures",
    "rate_limited_details",
]

EXEMPT_PATHS: Final = frozenset({"/health", "/metrics"})
AUTH_FAILED: Final = "defi_realtime.auth_failed"
# What the two middlewares share through the scope (one request's dict): the client's
# address, worked out once, and the status of the answer, seen by ``LimitRequests`` as it
# adds its headers, so that ``ThrottleAuthFailures`` need not wrap ``send`` as well.
_ADDRESS: Final = "defi_realtime.client_address"
_STATUS: Final = "defi_realtime.status"
_EXEMPT_PREFIX: Final = "/health/"
UNKNOWN_ADDRESS: Final = "unknown"


def exempt(path: str) -> bool:
    """Paths no limit applies to: the health probes and the Prometheus scrape."""
    return path in EXEMPT_PATHS or path.startswith(_EXEMPT_PREFIX)


class TrustedProxies:
    """``TRUSTED_PROXIES``: the addresses (or networks) whose ``X-Forwarded-For`` is
    believed (``client_address``'s rule). Empty: the peer is the client."""

    def __init__(self, setting: str) -> None:
        self.networks = tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in setting.split(",")
            if part.strip()
        )

    def client(self, peer: str | None, forwarded_for: str | None) -> str:
        """The client's address (``UNKNOWN_ADDRESS`` without a peer)."""
        headers = {} if forwarded_for is None else {FORWARDED_FOR: forwarded_for}
        return client_address(peer, headers, self.networks) or UNKNOWN_ADDRESS


def limit_headers(verdict: Verdict) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` as draft-ietf-httpapi-ratelimit-headers-10
    writes them (structured-field lists: the policy's name, quota ``q`` and window ``w``
    in seconds; what ``r`` remains and in how many seconds ``t`` a hit is free again),
    with ``Retry-After`` on a refusal."""
    quota = verdict.quota
    name = quota.name
    headers = [
        ("RateLimit-Policy", f'"{name}";q={quota.limit};w={quota.window}'),
        ("RateLimit", f'"{name}";r={verdict.remaining};t={int(verdict.reset_after + 0.999)}'),
    ]
    if not verdict.allowed:
        headers.append(("Retry-After", str(verdict.retry_after)))
    return headers


# Per quota name: the quota, its ``RateLimit-Policy`` value and the start of its
# ``RateLimit`` value, encoded once (a process has a handful of quotas).
_HEADER_PARTS: dict[str, tuple[Quota, bytes, bytes]] = {}


def _raw_limit_headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """``limit_headers`` of an allowed hit as raw ASGI pairs, from parts made once per
    quota (the fields are ours: no answer sets them itself)."""
    quota = verdict.quota
    parts = _HEADER_PARTS.get(quota.name)
    if parts is None or (parts[0] is not quota and parts[0] != quota):
        policy, _ = limit_headers(Verdict(True, quota, 0, 0.0))
        parts = _HEADER_PARTS[quota.name] = (
            quota,
            policy[1].encode(),
            f'"{quota.name}";r='.encode(),
        )
    reset = int(verdict.reset_after + 0.999)
    return [
        (b"ratelimit-policy", parts[1]),
        (b"ratelimit", b"%b%d;t=%d" % (parts[2], verdict.remaining, reset)),
    ]


def rate_limited_details(verdict: Verdict) -> dict[str, Any]:
    """The facts of a refusal, for the error's ``details`` and the WebSocket frame."""
    return {
        "policy": verdict.quota.name,
        "limit": verdict.quota.limit,
        "window": verdict.quota.window,
        "remaining": verdict.remaining,
        "reset": int(verdict.reset_after + 0.999),
        "retryAfter": verdict.retry_after,
    }


def _limits(scope: Scope) -> RateLimits | None:
    app = scope.get("app")
    return getattr(app.state, "rate_limits", None) if app is not None else None


def _address(scope: Scope, proxies: TrustedProxies) -> str:
    """The client's address, worked out once per request (kept in the scope)."""
    address: str | None = scope.get(_ADDRESS)
    if address is not None:
        return address
    client = scope.get("client")
    peer = client[0] if client else None
    if not proxies.networks:
        address = peer or UNKNOWN_ADDRESS
    else:
        forwarded = None
        for name, value in scope.get("headers", ()):
            if name == b"x-forwarded-for":
                forwarded = value.decode("latin-1")
        address = proxies.client(peer, forwarded)
    scope[_ADDRESS] = address
    return address


async def _refuse(
    verdict: Verdict, message: str, scope: Scope, receive: Receive, send: Send
) -> None:
    response = error_response(429, "rate_limited", message, rate_limited_details(verdict))
    for name, value in limit_headers(verdict):
        response.headers[name] = value
    await response(scope, receive, send)


def _with_headers(scope: Scope, send: Send, raw: list[tuple[bytes, bytes]]) -> Send:
    # Appended as raw pairs: no answer of ours sets these fields itself, and parsing the
    # response's headers (MutableHeaders) was a visible share of the per-request cost. The
    # status goes in the scope for ``ThrottleAuthFailures`` (a 401 is a failed attempt).

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            scope[_STATUS] = message["status"]
            message["headers"] = [*message.get("headers", ()), *raw]
        await send(message)

    return send_with_headers


def marking_failures(
    on_error: Callable[[HTTPConnection, Exception], Response],
) -> Callable[[HTTPConnection, Exception], Response]:
    """``AuthenticationMiddleware``'s ``on_error`` that also marks the scope as a failed
    authentication: on a WebSocket handshake Starlette closes the socket itself, so the
    mark is how ``ThrottleAuthFailures`` learns of it."""

    def on_error_marked(conn: HTTPConnection, exc: Exception) -> Response:
        conn.scope[AUTH_FAILED] = True
        return on_error(conn, exc)

    return on_error_marked


_CREDENTIAL_HEADERS: Final = frozenset({b"x-api-key", b"authorization"})


def _presents_credentials(scope: Scope) -> bool:
    """Does the request carry a key or token (a header; on a WebSocket handshake also the
    ``api_key`` query parameter)?"""
    for name, _ in scope.get("headers", ()):
        if name in _CREDENTIAL_HEADERS:
            return True
    return scope["type"] == "websocket" and b"api_key=" in scope.get("query_string", b"")


class ThrottleAuthFailures:
    """ASGI middleware before authentication: counts failed authentications (a key refused
    by the authentication middleware, or any 401 answer) per client address and refuses an
    address that has used up ``RATE_LIMIT_AUTH_FAILURES``: 429, or on a WebSocket handshake
    close 4029."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = _limits(scope) if scope["type"] in ("http", "websocket") else None
        if limits is None or exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        # Only an attempt to authenticate is refused (a read without credentials spends its
        # anonymous budget): no limiter round trip on anonymous requests.
        blocked = (
            await limits.authentication_blocked(_address(scope, self.proxies))
            if _presents_credentials(scope)
            else None
        )
        if blocked is not None:
            message = "too many failed authentications from this address"
            if scope["type"] == "websocket":
                reason = f"{message}; retry after {blocked.retry_after} s"
                await send(
                    {"type": "websocket.close", "code": CLOSE_RATE_LIMITED, "reason": reason}
                )
            else:
                await _refuse(blocked, f"{message}; retry later", scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            # A key refused by the authentication middleware marks the scope (on a handshake
            # too); any other 401 answer passed ``LimitRequests``, which noted its status.
            if scope.get(AUTH_FAILED) or scope.get(_STATUS) == 401:
                await limits.authentication_failed(_address(scope, self.proxies))


class LimitRequests:
    """ASGI middleware after authentication: spends the caller's budget (its key's tier, or
    ``RATE_LIMIT_ANONYMOUS`` by address) and answers 429 when it is spent."""

    def __init__(self, app: ASGIApp, proxies: TrustedProxies) -> None:
        self.app = app
        self.proxies = proxies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = _limits(scope) if scope["type"] == "http" else None
        if limits is None or exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        user = scope.get("user")
        if isinstance(user, KeyHolder):
            verdict = await limits.request(str(user.key.id), user.key.tier, "")
        else:
            verdict = await limits.request(None, None, _address(scope, self.proxies))
        if not verdict.allowed:
            await _refuse(
                verdict,
                f"rate limit of {verdict.quota.limit} requests per {verdict.quota.window} s "
                f"reached; retry after {verdict.retry_after} s",
                scope,
                receive,
                send,
            )
            return
        await self.app(scope, receive, _with_headers(scope, send, _raw_limit_headers(verdict)))


def forwarded_for(headers: Mapping[str, str]) -> str | None:
    """The ``X-Forwarded-For`` of a handshake's headers (names in lower case)."""
    return headers.get("x-forwarded-for")
