"""The Account aggregate: who owns API keys, alert rules, alerts and subscriptions.

An account has its own id (uuid4) and nothing else identifies it: two accounts with the
same name are two accounts. Keys say which account they belong to (``ApiKey.account_id``).

Accounts predate nothing but keys do: keys issued before accounts existed named their owner
by a string (``ApiKey.owner``, the ``--name`` of ``keys create`` by default). Each such
owner is one *legacy account* whose id is derived from the owner string
(``legacy_account_id``), so replaying the old events always gives the same account; when a
key is added to a legacy account, the account is adopted (``Account.adopt``) under that
id, keeping the owner string, so the rules recorded under it stay the account's
(docs/adr/0039-accounts-own-keys.md).
"""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import InvalidTransition
from .observations import check_label

__all__ = ["LEGACY_ACCOUNT_NAMESPACE", "Account", "legacy_account_id"]

LEGACY_ACCOUNT_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/legacy-account/")


def legacy_account_id(owner: str) -> UUID:
    """The account of keys issued before accounts, which named their owner ``owner``."""
    return uuid5(LEGACY_ACCOUNT_NAMESPACE, owner)


class Account(Aggregate):
    """An account: an id, an optional name and contact, and what it owns (by ``owner``)."""

    @staticmethod
    def create_id(*_: Any, legacy_owner: str | None = None, **__: Any) -> UUID:
        return legacy_account_id(legacy_owner) if legacy_owner is not None else uuid4()

    @event("Opened")
    def __init__(self, name: str, contact: str, legacy_owner: str | None = None) -> None:
        self.name = name
        self.contact = contact
        self.legacy_owner = legacy_owner
        self.erased = False

    @classmethod
    def open(cls, name: str = "", contact: str = "") -> Account:
        """A new account (a fresh id, whatever its name)."""
        if name:
            check_label(name, what="name")
        if contact:
            check_label(contact, what="contact")
        return cls(name=name, contact=contact, legacy_owner=None)

    @classmethod
    def adopt(cls, legacy_owner: str) -> Account:
        """The account of the keys that named their owner ``legacy_owner`` (its id is
        ``legacy_account_id(legacy_owner)``)."""
        return cls(name=legacy_owner, contact="", legacy_owner=legacy_owner)

    def erase(self) -> None:
        """The account's personal data was erased (its key destroyed): it holds nothing
        more and takes no new key (docs/adr/0042-crypto-shredding.md)."""
        if self.erased:
            raise InvalidTransition("account is already erased")
        self._erased()

    @event("Erased")
    def _erased(self) -> None:
        self.erased = True

    @property
    def owner(self) -> str:
        """What the account's rules, alerts and subscriptions are recorded under: the id,
        or for an adopted legacy account the owner string its old keys had."""
        return self.legacy_owner if self.legacy_owner is not None else str(self.id)
