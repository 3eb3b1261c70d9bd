"""``Notifier`` for webhook channels: a signed JSON POST with httpx.

Headers:

* ``X-Signature``: hex HMAC-SHA256, keyed with the channel's ``secret``, over
  ``timestamp + "." + body`` (only when the channel has a secret);
* ``X-Signature-Timestamp``: that timestamp, unix seconds (receivers reject old ones, which
  stops replays);
* ``X-Idempotency-Key``: the same for every attempt of one notification.

Any 2xx is a delivery; anything else, including a redirect (never followed), a failure.

SSRF guard (``WebhookGuard``, one rule for rule creation and delivery): the target's host is
resolved first and refused (permanently: retrying cannot help) when any address is private,
loopback, link-local, multicast, reserved or unspecified, unless ``allow_private`` (setting
``ALLOW_PRIVATE_WEBHOOKS``). An IP literal and ``localhost`` (RFC 6761) are decided without
DNS, so a rule naming one is refused when it is created; other names are resolved at delivery
(a DNS answer at creation would prove nothing about the one at delivery). Known limit: httpx
resolves the name again to connect, so a DNS answer that changes in between (rebinding) is
not caught; an egress proxy is the complete answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..application.delivery import DeliveryResult, NotificationJob, WebhookTargetRefused

__all__ = ["SsrfRefused", "WebhookGuard", "WebhookNotifier", "check_public_address", "sign"]

USER_AGENT = "defi-realtime-webhooks/1"

Resolver = Callable[[str, int], Awaitable[list[str]]]


class SsrfRefused(WebhookTargetRefused):
    """The webhook target is not a public internet address."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Signature`` of ``body`` sent at ``timestamp``."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def check_public_address(address: str) -> None:
    """Raise ``SsrfRefused`` unless ``address`` (an IP literal) is a public one."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        raise SsrfRefused(f"{address} is not a public address")


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


def known_addresses(host: str) -> list[str] | None:
    """The addresses of ``host`` when they are known without DNS: an IP literal is itself,
    ``localhost`` and ``*.localhost`` are loopback (RFC 6761); None for any other name."""
    literal = host.strip("[]")
    try:
        ipaddress.ip_address(literal.split("%", 1)[0])
    except ValueError:
        pass
    else:
        return [literal]
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return ["127.0.0.1", "::1"]
    return None


class WebhookGuard:
    """Which webhook URLs this node may call: the one SSRF decision, taken when a rule is
    created or changed (``check_new``) and again before every delivery (``check``).

    ``resolver`` answers names at delivery (the system's DNS); ``creation_resolver`` at
    creation: None (the default) leaves names to delivery, so that creating a rule never
    waits for DNS; tests pass one that answers in-process. ``allowed_hosts`` (lower-case
    names or IP literals; None: any): an egress allow-list, decided before any DNS."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: Resolver = _resolve,
        creation_resolver: Resolver | None = None,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.allowed_hosts = allowed_hosts
        self._resolver = resolver
        self._creation_resolver = creation_resolver

    async def check(self, url: str) -> None:
        """Raise ``SsrfRefused`` for a URL this node must not call, ``ConnectionError``
        when its name does not resolve (not a verdict: DNS may answer next time)."""
        await self._check(url, self._resolver)

    async def check_new(self, url: str) -> None:
        """Raise ``SsrfRefused`` for a URL a new or changed rule must not name: the same
        decision as ``check``, on what is known without DNS (unless a creation resolver was
        given); a name that does not resolve now is left to delivery."""
        try:
            await self._check(url, self._creation_resolver)
        except ConnectionError:
            return

    async def _check(self, url: str, resolver: Resolver | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SsrfRefused(f"not an http(s) URL: {url!r}")
        if (
            self.allowed_hosts is not None
            and parts.hostname.rstrip(".").lower() not in self.allowed_hosts
        ):
            raise SsrfRefused(f"{parts.hostname} is not in WEBHOOK_ALLOWED_HOSTS")
        if self.allow_private:
            return
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = known_addresses(parts.hostname)
        if addresses is None:
            if resolver is None:
                return
            try:
                addresses = await resolver(parts.hostname, port)
            except OSError as error:
                # Not an SSRF verdict: DNS may answer next time.
                raise ConnectionError(f"cannot resolve {parts.hostname}: {error}") from error
        if not addresses:
            raise ConnectionError(f"{parts.hostname} has no address")
        for address in addresses:
            check_public_address(address)


class WebhookNotifier:
    """POSTs ``job.payload()`` to the channel's ``url`` (``send``), or any JSON body
    (``post``: a durable subscription's batches). Pass a shared ``httpx.AsyncClient``
    (closed by its owner) or let the notifier make one (closed by ``aclose``)."""

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        *,
        timeout: float = 10.0,
        allow_private: bool = False,
        resolver: Resolver = _resolve,
        guard: WebhookGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_client = client is None
        self._client = client or httpx.AsyncClient()
        self.timeout = timeout
        # ``guard``: the node's one guard (shared with rule creation); otherwise one made of
        # ``allow_private`` and ``resolver``.
        self.guard = guard or WebhookGuard(allow_private=allow_private, resolver=resolver)
        self._clock = clock

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def check_target(self, url: str) -> None:
        """Raise ``SsrfRefused`` for a URL this notifier must not call."""
        await self.guard.check(url)

    async def send(self, job: NotificationJob) -> DeliveryResult:
        secret = job.channel.get("secret")
        return await self.post(
            str(job.channel.get("url", "")),
            secret if isinstance(secret, str) else None,
            job.idempotency_key,
            job.payload(),
        )

    async def post(
        self,
        url: str,
        secret: str | None,
        idempotency_key: str,
        payload: Mapping[str, Any],
    ) -> DeliveryResult:
        """POST ``payload`` to ``url``, signed with ``secret`` when there is one (also the
        ``WebhookSender`` of durable subscriptions)."""
        try:
            await self.check_target(url)
        except SsrfRefused as refused:
            return DeliveryResult(ok=False, error=f"refused: {refused}", retryable=False)
        except ConnectionError as error:
            return DeliveryResult(ok=False, error=str(error))
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Idempotency-Key": idempotency_key,
            "X-Signature-Timestamp": timestamp,
        }
        if secret:
            headers["X-Signature"] = sign(secret, timestamp, body)
        try:
            # Streamed and never read: a receiver's (possibly huge) answer is not our business.
            async with self._client.stream(
                "POST",
                url,
                content=body,
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            ) as response:
                status = response.status_code
        except httpx.HTTPError as error:
            return DeliveryResult(ok=False, error=f"{type(error).__name__}: {error}")
        if 200 <= status < 300:
            return DeliveryResult(ok=True, http_status=status)
        return DeliveryResult(ok=False, http_status=status, error=f"HTTP {status}")
