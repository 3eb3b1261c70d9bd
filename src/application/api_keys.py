"""An account's own keys, as its holders manage them over REST: list, issue, rotate, revoke.

The caller is a key (or a session token minted from one); it acts on its own account only.
Another account's key, an unknown id and a malformed one are all ``KeyNotFound`` (a 404:
ids of other accounts cannot be probed). A key issued here has the caller's tier and
allow-list: a holder never mints a key above its own. Revocation and rotation travel on the
log to every node (docs/adr/0039); this node also forgets the key at once, so the very next
request with it is refused here. Writes run on the writer thread (docs/adr/0003).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, TypeVar
from uuid import UUID

from ..domain.account import Account
from ..domain.api_key import ApiKey, hash_key
from .app import AccountNotFound, DefiRealtime

__all__ = [
    "MAX_LIVE_KEYS",
    "AccountKeyService",
    "AccountView",
    "IssuedKey",
    "KeyLimitReached",
    "KeyNotFound",
    "KeyView",
    "key_state",
]

T = TypeVar("T")
Write = Callable[[Callable[[], T]], Awaitable[T]]
Read = Callable[..., Awaitable[Any]]
KeyState = Literal["live", "rotated", "expired", "revoked"]

# Keys an account holds that still work (live, or rotated within their grace): enough for
# every service and environment of a customer; a bound keeps a leaked key from minting many.
MAX_LIVE_KEYS: Final = 20
# The longest grace a rotation may give the old key over REST.
MAX_GRACE: Final = 30 * 86_400.0


class KeyNotFound(LookupError):
    """No key of that id on the caller's account."""


class KeyLimitReached(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"an account holds at most {limit} working keys")
        self.limit = limit


def key_state(key: ApiKey, now: float) -> KeyState:
    """``revoked``, ``rotated`` (replaced, within its grace), ``expired`` (past it) or
    ``live``."""
    if key.revoked:
        return "revoked"
    if key.grace_until is not None:
        return "rotated" if key.usable(now) else "expired"
    return "live"


@dataclass(frozen=True, slots=True)
class KeyView:
    """A key as its account sees it: never its secret, nor its hash."""

    id: str
    name: str
    tier: str
    state: KeyState
    valid_until: float | None
    allowed_ips: list[str]
    created_at: float

    @classmethod
    def of(cls, key: ApiKey, now: float) -> KeyView:
        return cls(
            id=str(key.id),
            name=key.name,
            tier=key.tier,
            state=key_state(key, now),
            valid_until=key.valid_until(),
            allowed_ips=list(key.allowed_ips),
            created_at=key.created_on.timestamp(),
        )


@dataclass(frozen=True, slots=True)
class IssuedKey(KeyView):
    """A new key with its secret, ``key``: shown this once."""

    key: str

    @classmethod
    def made(cls, view: KeyView, secret: str) -> IssuedKey:
        return cls(
            **{field.name: getattr(view, field.name) for field in fields(KeyView)}, key=secret
        )


@dataclass(frozen=True, slots=True)
class AccountView:
    id: str
    name: str | None
    tier: str
    """The calling key's tier (tiers are per key)."""
    keys: list[KeyView]


class AccountKeyService:
    """The REST use cases of keys (``forget``: this node's key cache, e.g. ``KeyRing``)."""

    def __init__(
        self,
        app: DefiRealtime,
        write: Write[Any],
        *,
        grace: float,
        read: Read = asyncio.to_thread,
        forget: Callable[[UUID], None] = lambda _key: None,
        limit: int = MAX_LIVE_KEYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self._write = write
        self._read = read
        self._forget = forget
        self.grace = grace
        self.limit = limit
        self._clock = clock

    async def account(self, caller: ApiKey) -> AccountView:
        try:
            account: Account | None = await self._read(self.app.get_account, caller.account_id)
        except AccountNotFound:
            account = None
        return AccountView(
            id=str(caller.account_id),
            name=(account.name or None) if account is not None else None,
            tier=caller.tier,
            keys=await self.keys(caller),
        )

    async def keys(self, caller: ApiKey) -> list[KeyView]:
        now = self._clock()
        return [KeyView.of(key, now) for key in await self._keys_of(caller.account_id)]

    async def create(self, caller: ApiKey, name: str) -> IssuedKey:
        """A new key on the caller's account, of the caller's tier and allow-list.
        ``KeyLimitReached``; the domain's errors for a refused name."""
        now = self._clock()
        working = [key for key in await self._keys_of(caller.account_id) if key.usable(now)]
        if len(working) >= self.limit:
            raise KeyLimitReached(self.limit)
        app = self.app
        secret = await self._write(
            lambda: app.issue_api_key(
                name, caller.tier, account_id=caller.account_id, allowed_ips=caller.allowed_ips
            )
        )
        return await self._issued(secret)

    async def rotate(self, caller: ApiKey, raw_id: str, grace: float | None) -> IssuedKey:
        """A new key in place of ``raw_id``, which works ``grace`` seconds more (default:
        the deployment's). ``KeyNotFound``; ``InvalidTransition`` for a revoked or already
        rotated key."""
        key = await self._own(caller, raw_id)
        app, seconds = self.app, self.grace if grace is None else grace
        secret = await self._write(lambda: app.rotate_api_key(str(key.id), seconds))
        self._forget(key.id)  # its grace starts now on this node too
        return await self._issued(secret)

    async def revoke(self, caller: ApiKey, raw_id: str) -> KeyView:
        """Revoke ``raw_id`` now. ``KeyNotFound``; ``InvalidTransition`` if revoked already."""
        key = await self._own(caller, raw_id)
        app = self.app
        await self._write(lambda: app.revoke_api_key(str(key.id)))
        self._forget(key.id)
        revoked = await self._read(app.find_api_key, key.id)
        return KeyView.of(revoked, self._clock())

    async def _own(self, caller: ApiKey, raw_id: str) -> ApiKey:
        try:
            key_id = UUID(raw_id)
        except (ValueError, TypeError, AttributeError):
            raise KeyNotFound(str(raw_id)[:64]) from None
        key: ApiKey | None = await self._read(self.app.find_api_key, key_id)
        if key is None or key.account_id != caller.account_id:
            raise KeyNotFound(str(key_id))
        return key

    async def _keys_of(self, account_id: UUID) -> list[ApiKey]:
        keys: list[ApiKey] | None = await self._read(self.app.account_keys, account_id)
        if keys is None:
            app = self.app
            await self._write(lambda: app.index_account_keys(account_id))
            keys = await self._read(self.app.account_keys, account_id)
        return keys or []

    async def _issued(self, secret: str) -> IssuedKey:
        key: ApiKey | None = await self._read(
            self.app.find_api_key, ApiKey.id_for(hash_key(secret))
        )
        assert key is not None, "a key just issued is found"
        return IssuedKey.made(KeyView.of(key, self._clock()), secret)
