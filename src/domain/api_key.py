"""The ApiKey aggregate: a hashed key of an account, with a tier, its limits, an optional
IP allow-list, and its end (revoked, or rotated out after a grace period)."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .account import Account, legacy_account_id
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


# Only this tier may restrict a key to networks (the issue's "enterprise tier").
ALLOW_LIST_TIER: Final = "enterprise"
MAX_ALLOWED_NETWORKS: Final = 100


class InvalidTier(DomainError):
    """Unknown tier name."""


class InvalidAllowList(DomainError):
    """An IP allow-list that is not a list of networks, or on a tier without allow-lists."""


def allow_list(tier: str, networks: Sequence[str]) -> list[str]:
    """``networks`` (CIDRs or addresses) in canonical form; ``InvalidAllowList`` when one is
    not a network or the tier has no allow-lists."""
    if not networks:
        return []
    if tier != ALLOW_LIST_TIER:
        raise InvalidAllowList(
            f"IP allow-lists are for the {ALLOW_LIST_TIER} tier (this key is {tier!r})",
            field="allowed_ips",
        )
    if len(networks) > MAX_ALLOWED_NETWORKS:
        raise InvalidAllowList(
            f"at most {MAX_ALLOWED_NETWORKS} networks per key", field="allowed_ips"
        )
    canonical: list[str] = []
    for network in networks:
        try:
            # strict=False: 10.1.2.3/8 means 10.0.0.0/8, as an operator typing it means.
            canonical.append(str(ipaddress.ip_network(network.strip(), strict=False)))
        except ValueError:
            raise InvalidAllowList(
                f"{network!r} is not an IP address or network (CIDR)", field="allowed_ips"
            ) from None
    return list(dict.fromkeys(canonical))


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d: compare the IPv4 address.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def hash_key(secret: str) -> str:
    """Keys are random 256-bit tokens, so one SHA-256 (no salt, no stretching) is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(Aggregate):
    """An account's API key. Only the hash is kept.

    ``owner`` is what the key's data (rules, alerts, subscriptions) is recorded under: its
    account's ``Account.owner``. Keys issued before accounts have no ``account_id`` in
    their ``Issued`` event: their account is ``legacy_account_id(owner)``.
    """

    @staticmethod
    def create_id(key_hash: str, *_: Any, **__: Any) -> UUID:
        return uuid5(API_KEY_NAMESPACE, key_hash)

    @staticmethod
    def id_for(key_hash: str) -> UUID:
        return uuid5(API_KEY_NAMESPACE, key_hash)

    # ``account_id`` and ``allowed_ips`` came with accounts: older ``Issued`` events have
    # neither, and replay with the defaults.
    @event("Issued")
    def __init__(
        self,
        key_hash: str,
        name: str,
        owner: str,
        tier: str,
        account_id: str | None = None,
        allowed_ips: Sequence[str] = (),
    ) -> None:
        self.key_hash = key_hash
        self.name = name
        self.owner = owner
        self.tier = tier
        self.account_id = UUID(account_id) if account_id else legacy_account_id(owner)
        self.allowed_ips = tuple(allowed_ips)
        self._networks = tuple(ipaddress.ip_network(network) for network in allowed_ips)
        self.revoked = False
        self.grace_until: float | None = None

    @classmethod
    def issue(
        cls,
        secret: str,
        name: str,
        account: Account,
        tier: str = "free",
        allowed_ips: Sequence[str] = (),
    ) -> ApiKey:
        """A key of ``account``; ``InvalidTier``, ``InvalidAllowList`` or
        ``InvalidObservation`` (the name) when the input is not acceptable."""
        if tier not in get_args(Tier):
            raise InvalidTier(f"unknown tier {tier!r}; expected one of {list(get_args(Tier))}")
        check_label(name, what="name")
        return cls(
            key_hash=hash_key(secret),
            name=name,
            owner=account.owner,
            tier=tier,
            account_id=str(account.id),
            allowed_ips=allow_list(tier, allowed_ips),
        )

    @property
    def limits(self) -> TierLimits:
        return TIER_LIMITS[self.tier]

    def usable(self, now: float) -> bool:
        """Whether the key authenticates at ``now`` (unix seconds): not revoked, and not
        rotated out longer than its grace period ago."""
        return not self.revoked and (self.grace_until is None or now < self.grace_until)

    def valid_until(self) -> float | None:
        """When the key stops working by itself (the end of its grace period), if ever."""
        return None if self.revoked else self.grace_until

    def allows(self, address: str | None) -> bool:
        """Whether a request from ``address`` may use this key (its allow-list, if any;
        an unknown address is refused by a key that has one)."""
        if not self._networks:
            return True
        parsed = None if address is None else _address(address)
        return parsed is not None and any(parsed in network for network in self._networks)

    def revoke(self) -> None:
        if self.revoked:
            raise InvalidTransition("key is already revoked")
        self._revoked()

    @event("Revoked")
    def _revoked(self) -> None:
        self.revoked = True

    def rotate_out(self, grace_until: float) -> None:
        """The key was replaced; it keeps working until ``grace_until`` (unix seconds)."""
        if self.revoked:
            raise InvalidTransition("key is revoked")
        if self.grace_until is not None:
            raise InvalidTransition("key was already rotated")
        self._rotated_out(grace_until)

    @event("RotatedOut")
    def _rotated_out(self, grace_until: float) -> None:
        self.grace_until = grace_until


ACCOUNT_KEYS_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://defi-realtime/account-keys/")


class KeyListing(Aggregate):
    """An account's keys by id, in the order issued: listing them is one lookup plus one
    per key. Saved in the transaction that issues a key of the account (its id is derived
    from the account's); an account whose keys predate it gets one, filled from a scan of
    the keys, the first time it is listed or issued a key."""

    @staticmethod
    def create_id(account_id: str, *_: Any, **__: Any) -> UUID:
        return uuid5(ACCOUNT_KEYS_NAMESPACE, account_id)

    @staticmethod
    def id_for(account_id: UUID | str) -> UUID:
        return uuid5(ACCOUNT_KEYS_NAMESPACE, str(account_id))

    @event("Opened")
    def __init__(self, account_id: str, keys: Sequence[str] = ()) -> None:
        self.account_id = account_id
        self.keys: list[str] = list(keys)

    def add(self, key_id: UUID | str) -> None:
        if str(key_id) not in self.keys:
            self._added(str(key_id))

    @event("Added")
    def _added(self, key_id: str) -> None:
        self.keys.append(key_id)
