"""API-key authentication, one mechanism for every transport.

Where a credential comes from (``credential``), and whose key it is
(``ApiKeyBackend.identify``), are decided here once: Starlette's
``AuthenticationMiddleware`` runs ``ApiKeyBackend`` for every HTTP request, and both
WebSocket transports ask the same backend through ``SocketGateway.admit``. A request with
no credential is anonymous (``request.user.is_authenticated`` is False); one whose key is
not live is refused (401 ``unauthorized``; on a WebSocket handshake, close 4001), and one
from an address outside its key's IP allow-list too (403 ``forbidden``; close 4003).

Credentials: ``X-API-Key: <key>``, ``Authorization: Bearer <key or session token>``, and on
a WebSocket handshake only (browsers cannot set its headers) ``?token=<session token>`` or,
deprecated, ``?api_key=<key>``. Query strings are redacted from every log line
(``logs.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    BaseUser,
)
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from ..application.keyring import KeyRing
from ..domain.api_key import ApiKey
from .client_address import Network, client_address
from .errors import ApiError, error_response
from .sessions import SessionTokens

__all__ = [
    "ApiKeyBackend",
    "Credential",
    "ForbiddenAddress",
    "InvalidKey",
    "KeyHolder",
    "credential",
    "require_key",
]

KEY_HEADER: Final = "x-api-key"
AUTHORIZATION: Final = "authorization"
BEARER: Final = "bearer "
KEY_PREFIX: Final = "drt_"
# Browsers cannot set headers on a WebSocket handshake: there a session token may come in
# the query, or (deprecated: a key in a URL ends up in histories and proxies) the key.
TOKEN_QUERY: Final = "token"
KEY_QUERY: Final = "api_key"


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request presents: an API key, or a session token minted from one."""

    kind: Literal["key", "token"]
    value: str


class KeyHolder(BaseUser):
    """The authenticated user: the holder of a live API key (or of a session token of
    one: ``via``)."""

    def __init__(self, key: ApiKey, via: Literal["key", "token"] = "key") -> None:
        self.key = key
        self.via = via

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.owner

    @property
    def identity(self) -> str:
        """What the account's data is recorded under (``Account.owner``)."""
        return self.key.owner


def credential(
    headers: Mapping[str, str], query: Mapping[str, str], *, websocket: bool
) -> Credential | None:
    """The credential a request presents (header names in lower case), if any."""
    key = headers.get(KEY_HEADER)
    if key:
        return Credential("key", key)
    authorization = headers.get(AUTHORIZATION, "")
    if authorization[: len(BEARER)].lower() == BEARER:
        value = authorization[len(BEARER) :].strip()
        if value:
            return Credential("key" if value.startswith(KEY_PREFIX) else "token", value)
    if websocket:
        token = query.get(TOKEN_QUERY)
        if token:
            return Credential("token", token)
        key = query.get(KEY_QUERY)
        if key:
            return Credential("key", key)
    return None


class InvalidKey(AuthenticationError):
    """A key or token was presented and it is not a live key's."""


class ForbiddenAddress(AuthenticationError):
    """A live key used from an address outside its IP allow-list."""


class ApiKeyBackend(AuthenticationBackend):
    """Starlette's authentication backend over the ``KeyRing`` and the session tokens."""

    def __init__(
        self, keyring: KeyRing, sessions: SessionTokens, trusted_proxies: Sequence[Network] = ()
    ) -> None:
        self.keyring = keyring
        self.sessions = sessions
        self.trusted_proxies = tuple(trusted_proxies)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str | None:
        """The client's address (``client_address`` with ``TRUSTED_PROXIES``)."""
        return client_address(peer, headers, self.trusted_proxies)

    async def identify(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        *,
        websocket: bool,
        address: str | None = None,
    ) -> tuple[ApiKey, Credential] | None:
        """The key presented and how, None when there is none; ``InvalidKey`` when it is
        not live, ``ForbiddenAddress`` when ``address`` is outside its allow-list."""
        presented = credential(headers, query, websocket=websocket)
        if presented is None:
            return None
        if presented.kind == "key":
            key = await self.keyring.identify(presented.value)
        else:
            key_id = self.sessions.key_id(presented.value)
            key = None if key_id is None else await self.keyring.by_id(key_id)
        if key is None:
            raise InvalidKey("invalid API key or session token")
        if not key.allows(address):
            raise ForbiddenAddress("this key may not be used from this address")
        return key, presented

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        if conn.scope["type"] == "websocket":
            # The socket gateway checks handshakes itself, with WebSocket close codes
            # (4001, 4003) that this middleware cannot send.
            return None
        peer = conn.client.host if conn.client is not None else None
        found = await self.identify(
            conn.headers,
            conn.query_params,
            websocket=False,
            address=self.client(peer, conn.headers),
        )
        if found is None:
            return None
        key, presented = found
        return AuthCredentials(["authenticated", f"tier:{key.tier}"]), KeyHolder(
            key, presented.kind
        )


def on_auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    """A presented key that is not live: 401; one used from elsewhere than its allow-list
    says: 403. Both in the API's error shape."""
    if isinstance(exc, ForbiddenAddress):
        return error_response(403, "forbidden", "this API key may not be used from this address")
    return error_response(401, "unauthorized", "the API key or session token is invalid or revoked")


def require_key(request: Request) -> ApiKey:
    """The caller's key; 401 for an anonymous request."""
    user = request.user
    if not isinstance(user, KeyHolder):
        raise ApiError(
            401, "unauthorized", "an X-API-Key header or an Authorization: Bearer is required"
        )
    return user.key
