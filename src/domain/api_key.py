"""The ApiKey aggregate: a hashed key of an account, with a tier and its limits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import DomainError, InvalidTransition
from .observations import check_label

Tier = Literal["free", "basic", "pro", "enterprise"]
API_KEY_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/api-key/")


@dataclass(frozen=True)
class TierLimits:
    requests_per_minute: int
    websocket_connections: int
    subscriptions_per_connection: int
    alert_rules: int


TIER_LIMITS: Final[dict[str, TierLimits]] = {
    "free": TierLimits(60, 2, 10, 5),
    "basic": TierLimits(600, 10, 50, 50),
    "pro": TierLimits(6_000, 100, 200, 500),
    "enterprise": TierLimits(60_000, 1_000, 1_000, 10_000),
}


class InvalidTier(DomainError):
    """Unknown tier name."""


def hash_key(secret: str) -> str:
    """Keys are random 256-bit tokens, so one SHA-256 (no salt, no stretching) is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Aggregate):
    """An account's API key. Only the hash is kept."""

    @staticmethod
    def create_id(key_hash: str, *_: Any, **__: Any) -> UUID:
        return uuid5(API_KEY_NAMESPACE, key_hash)

    @staticmethod
    def id_for(key_hash: str) -> UUID:
        return uuid5(API_KEY_NAMESPACE, key_hash)

    @event("Issued")
    def __init__(self, key_hash: str, name: str, owner: str, tier: str) -> None:
        self.key_hash = key_hash
        self.name = name
        self.owner = owner
        self.tier = tier
        self.revoked = False

    @classmethod
    def issue(cls, secret: str, name: str, tier: str = "free", owner: str | None = None) -> ApiKey:
        if tier not in get_args(Tier):
            raise InvalidTier(f"unknown tier {tier!r}; expected one of {list(get_args(Tier))}")
        check_label(name, what="name")
        return cls(key_hash=hash_key(secret), name=name, owner=owner or name, tier=tier)

    @property
    def limits(self) -> TierLimits:
        return TIER_LIMITS[self.tier]

    def revoke(self) -> None:
        if self.revoked:
            raise InvalidTransition("key is already revoked")
        self._revoked()

    @event("Revoked")
    def _revoked(self) -> None:
        self.revoked = True
