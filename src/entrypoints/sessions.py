"""Short-lived session tokens: signed JWTs (HS256) minted from an API key.

A browser should not keep an API key in a URL (a WebSocket handshake cannot carry a
header): it asks ``POST /v2/auth/token`` with its key and opens ``/v2/realtime?token=...``
with the answer. A token names its key by id (``sub``) and nothing else; each use looks
the key up, so a revoked key's tokens stop working with it. Tokens are signed with
``SESSION_SECRET``, or a secret generated once into ``DATA_DIR/session-secret``, so a
restart keeps them valid.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from uuid import UUID

import jwt

from ..domain.api_key import ApiKey

__all__ = ["SessionToken", "SessionTokens", "session_secret"]

ALGORITHM: Final = "HS256"
AUDIENCE: Final = "defi-realtime/session"
SECRET_FILE: Final = "session-secret"


@dataclass(frozen=True, slots=True)
class SessionToken:
    token: str
    expires_at: float


class SessionTokens:
    """Mints and checks session tokens (``ttl`` seconds each), signed with the secret
    ``secret`` gives (asked on first use: building the API reads no file)."""

    def __init__(
        self, secret: Callable[[], str], ttl: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret_source = secret
        self._known: str | None = None
        self.ttl = ttl
        self._clock = clock

    @property
    def _secret(self) -> str:
        if self._known is None:
            self._known = self._secret_source()
        return self._known

    def mint(self, key: ApiKey) -> SessionToken:
        """A token for ``key``; it ends with the key's grace period, if that is sooner."""
        now = self._clock()
        expires = now + self.ttl
        until = key.valid_until()
        if until is not None:
            expires = min(expires, until)
        claims = {"sub": str(key.id), "aud": AUDIENCE, "iat": int(now), "exp": int(expires)}
        return SessionToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), int(expires))

    def key_id(self, token: str) -> UUID | None:
        """The id of the key ``token`` was minted from; None unless it is a token of ours,
        unaltered and not expired."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                # Expiry is checked below, against the clock tokens are minted with.
                options={"require": ["exp", "sub", "aud"], "verify_exp": False},
            )
            if float(claims["exp"]) <= self._clock():
                return None
            return UUID(str(claims["sub"]))
        except (jwt.PyJWTError, ValueError, TypeError):
            return None


def session_secret(configured: str | None, data_dir: Path) -> str:
    """``SESSION_SECRET``, else the one kept in ``data_dir`` (generated the first time,
    readable by its owner only; concurrent first starts agree on one)."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(48))
    for _ in range(50):  # another process may be writing it this very moment
        secret = path.read_text().strip()
        if secret:
            return secret
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty: remove it, or set SESSION_SECRET")
