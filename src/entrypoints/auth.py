"""API-key authentication, one mechanism for every transport.

Where a key comes from (``credential``), and who it is (``KeyRing.identify``), are decided
here once: Starlette's ``AuthenticationMiddleware`` runs ``ApiKeyBackend`` for every HTTP
request and ASGI WebSocket, and the lean WebSocket transport (which never reaches the ASGI
app) asks the same backend through ``SocketGateway.admit``. A request with no key is
anonymous (``request.user.is_authenticated`` is False); a request with a key that is not a
live key is refused (401 ``unauthorized``; on a WebSocket handshake, close 4001).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

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
from .errors import ApiError, error_response

__all__ = ["ApiKeyBackend", "KeyHolder", "credential", "require_key"]

KEY_HEADER: Final = "x-api-key"
# Browsers cannot set headers on a WebSocket handshake: there the key may come in the query.
KEY_QUERY: Final = "api_key"


class KeyHolder(BaseUser):
    """The authenticated user: the holder of a live API key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.key.owner

    @property
    def identity(self) -> str:
        return self.key.owner


def credential(
    headers: Mapping[str, str], query: Mapping[str, str], *, websocket: bool
) -> str | None:
    """The API key a request presents (header names in lower case), if any."""
    key = headers.get(KEY_HEADER)
    if not key and websocket:
        key = query.get(KEY_QUERY)
    return key or None


class InvalidKey(AuthenticationError):
    """A key was presented and it is not a live key."""


class ApiKeyBackend(AuthenticationBackend):
    """Starlette's authentication backend over the ``KeyRing``."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    async def identify(
        self, headers: Mapping[str, str], query: Mapping[str, str], *, websocket: bool
    ) -> ApiKey | None:
        """The key presented, None when there is none; ``InvalidKey`` when it is not live."""
        secret = credential(headers, query, websocket=websocket)
        if secret is None:
            return None
        key = await self.keyring.identify(secret)
        if key is None:
            raise InvalidKey("invalid API key")
        return key

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        key = await self.identify(
            conn.headers, conn.query_params, websocket=conn.scope["type"] == "websocket"
        )
        if key is None:
            return None
        return AuthCredentials(["authenticated", f"tier:{key.tier}"]), KeyHolder(key)


def on_auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    """A presented key that is not live: 401 in the API's error shape."""
    return error_response(401, "unauthorized", "the API key is invalid or revoked")


def require_key(request: Request) -> ApiKey:
    """The caller's key; 401 for an anonymous request."""
    user = request.user
    if not isinstance(user, KeyHolder):
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")
    return user.key
