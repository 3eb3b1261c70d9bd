"""The WebSocket entrypoint's handshake policy, shared by both transports.

``SocketGateway`` decides who may connect (origin, API key, connections per key or per
anonymous address, failed authentications, options) and whether a client message may be
read (its rate limit, ADR 0036) for the Starlette endpoint and the lean protocol
(``ws_transport``) alike.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from ..application.rate_limiting import RateLimits
from ..application.realtime import (
    CLOSE_FORBIDDEN,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNAUTHORIZED,
    Connection,
    RealtimeHub,
)
from ..application.realtime.outbox import Sink
from ..application.realtime.protocol import rate_limited_frame
from .auth import ApiKeyBackend, ForbiddenAddress, InvalidKey, credential
from .rate_limits import UNKNOWN_ADDRESS, rate_limited_details
from .settings import Settings

log = logging.getLogger(__name__)

REALTIME_PATH: Final = "/v2/realtime"
# Where the lifespan puts the gateway in uvicorn's app state for the lean protocol.
GATEWAY_STATE_KEY: Final = "defi_realtime.socket_gateway"
ANONYMOUS_MAX_SUBSCRIPTIONS: Final = 20


class HandshakeRefused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(slots=True)
class Admission:
    """A handshake the gateway accepted (and counted against the key, if any)."""

    owner: str | None
    max_subscriptions: int
    batch: bool
    reserved: bool
    address: str | None = None
    key_id: str | None = None
    tier: str | None = None
    valid_until: float | None = None


@dataclass(slots=True)
class SocketTally:
    """What the sockets did since the metrics last took it: plain counts on the hot path
    (a write per connection per batch), moved into the metrics by the sampler."""

    frames: int = 0
    size: int = 0
    closes: Counter[int] = field(default_factory=Counter)
    handshakes: Counter[str] = field(default_factory=Counter)

    def take(self) -> SocketTally:
        """The counts so far; this tally starts again from zero."""
        taken = SocketTally(self.frames, self.size, self.closes, self.handshakes)
        self.frames = self.size = 0
        self.closes, self.handshakes = Counter(), Counter()
        return taken


class SocketGateway:
    """Who may open a socket, with what limits: one policy for every transport."""

    def __init__(
        self,
        hub: RealtimeHub,
        settings: Settings,
        auth: ApiKeyBackend,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.hub = hub
        self.settings = settings
        # The API's own authentication backend: one key lookup and cache for REST and
        # both WebSocket transports.
        self.auth = auth
        # The API's own limiter too (None: RATE_LIMITS=off): one budget per key or address.
        self.rate_limits = rate_limits
        self._origins = settings.allowed_origins
        self.tally = SocketTally()

    async def admit(
        self, headers: Mapping[str, str], query: Mapping[str, str], address: str | None = None
    ) -> Admission:
        """Check a handshake (header names in lower case) from the peer at ``address``
        (the client behind it when the peer is a trusted proxy); raise ``HandshakeRefused``."""
        address = self.auth.client(address, headers) or UNKNOWN_ADDRESS
        try:
            admission = await self._admit(headers, query, address)
        except HandshakeRefused as refused:
            self.tally.handshakes[str(refused.code)] += 1
            self.tally.closes[refused.code] += 1
            raise
        self.tally.handshakes["accepted"] += 1
        return admission

    async def _admit(
        self, headers: Mapping[str, str], query: Mapping[str, str], address: str
    ) -> Admission:
        origin = headers.get("origin")
        if self._origins and origin is not None and origin.rstrip("/") not in self._origins:
            raise HandshakeRefused(CLOSE_FORBIDDEN_ORIGIN, "origin not allowed")
        limits = self.rate_limits
        if limits is not None and credential(headers, query, websocket=True) is not None:
            blocked = await limits.authentication_blocked(address)
            if blocked is not None:
                raise HandshakeRefused(
                    CLOSE_TOO_MANY_CONNECTIONS,
                    "too many failed authentications from this address; "
                    f"retry after {blocked.retry_after} s",
                )
        try:
            found = await self.auth.identify(headers, query, websocket=True, address=address)
        except InvalidKey:
            if limits is not None:
                await limits.authentication_failed(address)
            raise HandshakeRefused(CLOSE_UNAUTHORIZED, "invalid API key or session token") from None
        except ForbiddenAddress:
            raise HandshakeRefused(CLOSE_FORBIDDEN, "address not allowed for this key") from None
        key = None if found is None else found[0]
        if key is None and self.settings.require_key_for_reads:
            raise HandshakeRefused(CLOSE_UNAUTHORIZED, "an API key is required")
        batch = query.get("batch", "").lower() in ("1", "true", "yes")
        if key is None:
            reserved = limits is not None and await self._reserve_address(address)
            return Admission(None, ANONYMOUS_MAX_SUBSCRIPTIONS, batch, reserved, address)
        if not self.hub.reserve(key.owner, key.limits.websocket_connections):
            raise HandshakeRefused(
                CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this API key"
            )
        return Admission(
            key.owner,
            key.limits.subscriptions_per_connection,
            batch,
            True,
            address,
            key_id=str(key.id),
            tier=key.tier,
            valid_until=key.valid_until(),
        )

    async def _reserve_address(self, address: str) -> bool:
        """Take one of the address's anonymous sockets (False: uncounted, the shared count
        is unreachable); raise ``HandshakeRefused`` when all are held."""
        try:
            taken = await self.hub.reserve_address(address, self.settings.ws_anonymous_sockets)
        except Exception:
            # As the rate limits (ADR 0036): an unreachable Redis must not refuse every
            # anonymous socket; this one is let in uncounted.
            log.warning("anonymous socket slots unavailable", exc_info=True)
            return False
        if not taken:
            raise HandshakeRefused(
                CLOSE_TOO_MANY_CONNECTIONS, "too many connections from this address"
            )
        return True

    def abandon(self, admission: Admission) -> None:
        """The socket went away between admission and ``open``."""
        if not admission.reserved:
            return
        admission.reserved = False
        if admission.owner is not None:
            self.hub.release(admission.owner)
        elif admission.address is not None:
            self.hub.release_address(admission.address)

    async def message_refusal(self, admission: Admission) -> bytes | None:
        """Spend a client message of the socket ``admission`` opened: None when it may be
        read, else the ``rate_limited`` error frame to answer instead."""
        limits = self.rate_limits
        if limits is None:
            return None
        verdict = await limits.message(admission.key_id, admission.tier, admission.address or "")
        if verdict.allowed:
            return None
        return rate_limited_frame(
            f"rate limit of {verdict.quota.limit} messages per {verdict.quota.window} s "
            f"reached; retry after {verdict.retry_after} s",
            rate_limited_details(verdict),
        )

    def open(
        self,
        admission: Admission,
        *,
        close: Callable[[int, str], Awaitable[None] | None] | None = None,
        sink: Sink | None = None,
        send_text: Callable[[str], Awaitable[None]] | None = None,
    ) -> Connection:
        connection = Connection(
            admission.owner,
            close=close,
            sink=sink,
            send_text=send_text,
            max_queue=self.settings.ws_queue_size,
            max_subscriptions=admission.max_subscriptions,
            batch=admission.batch,
            address=admission.address,
            key_id=admission.key_id,
            valid_until=admission.valid_until,
            # Counted by the connection into the gateway's one tally (frames, bytes,
            # closes): a closure per connection cost ~0.5 KB of 10,000 sockets' memory.
            tally=self.tally,
        )
        connection.reserved = admission.reserved
        admission.reserved = False
        self.hub.connect(connection)
        return connection
