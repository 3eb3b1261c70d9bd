"""An account's personal data: erase it (crypto-shredding) and export it.

``erase``: the account's keys are revoked, its rules deleted and subscriptions closed, the
account recorded ``Erased`` (``DefiRealtime.close_account``); then its data key is destroyed,
so the personal fields of its events replay as ``REDACTED`` from now on, and the read models
that held them in clear are purged (``PersonalRecords``). Counters keyed by its API keys
(rate limits in Redis) are purged by the caller (``KeyTraces``: asynchronous).

``export``: everything held about the account, as its owner may read it (never a key's
secret or hash, never a webhook's signing secret).

Both are synchronous (event store, SQL): call them from a thread; writes belong on the
writer thread (docs/adr/0003). docs/adr/0042-crypto-shredding.md, docs/privacy.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from ..domain.account import Account
from ..domain.api_key import ApiKey
from .alert_rules import AlertRuleView
from .app import DefiRealtime
from .delivery import AlertTransition, DeliveryAttempt
from .durable_subscriptions import SubscriptionView
from .personal_fields import subject_of
from .ports import AccountKeys, AlertRuleReadModel, PersonalRecords

__all__ = [
    "AccountExport",
    "AccountPrivacy",
    "AccountRecord",
    "Erasure",
    "KeyRecord",
    "KeyTraces",
    "RuleRecords",
]

_log = logging.getLogger(__name__)


class KeyTraces(Protocol):
    """Entries kept under an API key's id outside the stores (rate-limit counters)."""

    async def purge(self, key_ids: Sequence[str]) -> int:
        """Delete every entry of ``key_ids``; how many."""
        ...


class DeliveryRecords(Protocol):
    """The part of ``DeliveryLog`` an export reads."""

    def attempts(self, rule_id: str, limit: int = 1_000) -> list[DeliveryAttempt]: ...

    def transitions(self, rule_id: str, limit: int = 1_000) -> list[AlertTransition]: ...


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erase did."""

    account_id: str
    keys_revoked: int
    rules_deleted: int
    subscriptions_closed: int
    # Whether a data key was destroyed now (an account that never stored a personal field
    # has none; an account erased before had it destroyed then).
    key_destroyed: bool
    rows_purged: int
    # Whether no copy of the key or the rows is left in the stores' files (False: an older
    # PostgreSQL transaction still saw them; erasing again later finishes the job).
    scrubbed: bool
    key_ids: tuple[str, ...]
    # Filled in by the caller that purged the traces (``KeyTraces``).
    traces_purged: int = 0


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    name: str
    contact: str
    legacy_owner: str | None
    erased: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's metadata: never its secret, nor its hash."""

    id: str
    name: str
    tier: str
    revoked: bool
    grace_until: float | None
    allowed_ips: list[str]
    created_at: float


@dataclass(frozen=True, slots=True)
class RuleRecords:
    """A rule (deleted ones too) with its transitions and delivery attempts."""

    rule: AlertRuleView
    transitions: list[AlertTransition] = field(default_factory=list)
    deliveries: list[DeliveryAttempt] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AccountExport:
    account: AccountRecord
    keys: list[KeyRecord]
    rules: list[RuleRecords]
    subscriptions: list[SubscriptionView]
    exported_at: float


class AccountPrivacy:
    """Erase and export an account's personal data (see the module docstring)."""

    def __init__(
        self,
        app: DefiRealtime,
        keys: AccountKeys,
        rules: AlertRuleReadModel,
        records: Sequence[PersonalRecords],
        deliveries: DeliveryRecords,
    ) -> None:
        self._app = app
        self._keys = keys
        self._rules = rules
        self._records = records
        self._deliveries = deliveries

    def erase(self, account_id: UUID) -> Erasure:
        """Erase ``account_id``'s personal data (see the module docstring). Again on an
        erased account: the stores are purged and scrubbed again. ``AccountNotFound``."""
        owner = self._app.get_account(account_id).owner
        listed = [view.id for view in self._rules.alert_rules(owner, include_deleted=True)]
        closed = self._app.close_account(account_id, listed)
        destroyed = self._keys.destroy(subject_of(closed.owner))
        self._app.forget_personal_fields(closed)
        purged = [record.purge(closed.owner, closed.rule_ids) for record in self._records]
        scrubbed = destroyed.scrubbed and all(purge.scrubbed for purge in purged)
        if not scrubbed:
            _log.warning(
                "account %s erased, but an older transaction still sees some of its rows: "
                "erase it again later to scrub them from the files",
                account_id,
            )
        return Erasure(
            account_id=str(account_id),
            keys_revoked=closed.keys_revoked,
            rules_deleted=closed.rules_deleted,
            subscriptions_closed=len(closed.subscription_ids),
            key_destroyed=destroyed.rows > 0,
            rows_purged=sum(purge.rows for purge in purged),
            scrubbed=scrubbed,
            key_ids=tuple(str(key_id) for key_id in closed.key_ids),
        )

    def export(self, account_id: UUID) -> AccountExport:
        """Everything held about ``account_id``. ``AccountNotFound``."""
        account = self._app.get_account(account_id)
        owner = account.owner
        rules = []
        for view in self._rules.alert_rules(owner, include_deleted=True):
            rules.append(
                RuleRecords(
                    rule=_rule_now(self._app, view),
                    transitions=self._deliveries.transitions(view.id),
                    deliveries=self._deliveries.attempts(view.id),
                )
            )
        subscriptions = [SubscriptionView.of(s) for s in self._app.list_subscriptions(owner)]
        return AccountExport(
            account=_account(account),
            keys=[_key(key) for key in self._app.api_keys(account_id)],
            rules=rules,
            subscriptions=subscriptions,
            exported_at=time.time(),
        )


def _rule_now(app: DefiRealtime, view: AlertRuleView) -> AlertRuleView:
    # The aggregate is the truth (the listing may lag behind by a follower's poll).
    try:
        return AlertRuleView.of(app.get_alert_rule(UUID(view.id), view.owner))
    except (LookupError, ValueError):
        return view  # deleted: as the listing last saw it


def _account(account: Account) -> AccountRecord:
    return AccountRecord(
        id=str(account.id),
        name=account.name,
        contact=account.contact,
        legacy_owner=account.legacy_owner,
        erased=account.erased,
        created_at=account.created_on.timestamp(),
    )


def _key(key: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=str(key.id),
        name=key.name,
        tier=key.tier,
        revoked=key.revoked,
        grace_until=key.grace_until,
        allowed_ips=list(key.allowed_ips),
        created_at=key.created_on.timestamp(),
    )
