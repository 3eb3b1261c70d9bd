"""Erase and export answers (``DELETE /v2/account``, ``GET /v2/account/export``)."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel, Field

from .alert_history import AlertTransition, DeliveryAttempt
from .alerts import AlertRule
from .common import ANSWER
from .subscriptions import Subscription

__all__ = [
    "AccountErasure",
    "AccountExport",
    "ExportedAccount",
    "ExportedKey",
    "ExportedRule",
]


class AccountErasure(BaseModel):
    """What ``DELETE /v2/account`` did: the account is erased for good."""

    model_config = ANSWER
    account_id: UUID
    keys_revoked: int = Field(description="every key of the account is revoked")
    rules_deleted: int
    subscriptions_closed: int
    key_destroyed: bool = Field(
        description="the account's data key was destroyed: the personal fields of its "
        "events replay redacted from now on (false: it never stored one)"
    )
    rows_purged: int = Field(description="read-model rows deleted (rules, deliveries)")
    scrubbed: bool = Field(
        description="no copy is left in the databases' files (false: an older transaction "
        "still saw some rows; `defi-realtime accounts erase ID` again finishes the job)"
    )
    traces_purged: int = Field(description="Redis entries deleted (rate-limit counters)")


class ExportedAccount(BaseModel):
    model_config = ANSWER
    id: UUID
    name: str
    contact: str
    legacy_owner: str | None = Field(description="the owner name of keys issued before accounts")
    erased: bool
    created_at: float


class ExportedKey(BaseModel):
    """A key's metadata: never its secret, nor its hash."""

    model_config = ANSWER
    id: UUID
    name: str
    tier: str
    revoked: bool
    grace_until: float | None = Field(description="end of a rotated-out key's grace period")
    allowed_ips: list[str]
    created_at: float


class ExportedRule(AlertRule):
    """A rule (deleted ones too), its transitions and its delivery attempts."""

    state: str  # type: ignore[assignment]  # deleted rules too
    transitions: list[AlertTransition]
    deliveries: list[DeliveryAttempt]


class AccountExport(BaseModel):
    """Everything held about the calling key's account."""

    model_config = ANSWER
    account: ExportedAccount
    keys: list[ExportedKey]
    alert_rules: list[ExportedRule]
    subscriptions: list[Subscription]
    exported_at: float
