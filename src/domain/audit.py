"""The audit trail's fact: who asked to change what, from where, and how it ended.

One ``AuditRecord`` aggregate per state-changing request, created by its single
``Recorded`` event. The records live in their own event-sourced application (their own
notification log, docs/adr/0041-audit-trail-in-its-own-log.md), never in the main log: a
refused or repeated request must not move the main log's head, yet it is audited.
"""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, event

__all__ = ["AUDIT_ACTIONS", "AuditRecord", "outcome_of"]

# What the audit trail names each state-changing operation (``action`` filters by these).
AUDIT_ACTIONS: Final = frozenset(
    {
        "ingest",
        "alert_rule.create",
        "alert_rule.update",
        "alert_rule.delete",
        "alert_rule.pause",
        "alert_rule.resume",
        "alert_rule.redrive",
        "subscription.create",
        "subscription.delete",
        "auth.token",
        "accounts.open",
        "keys.create",
        "keys.revoke",
        "keys.rotate",
        "accounts.erase",
    }
)


def outcome_of(status: int) -> str:
    """``ok`` for a 2xx/3xx answer, ``rejected: <status>`` for a 4xx, ``failed: <status>``
    for a 5xx."""
    if status < 400:
        return "ok"
    return f"{'rejected' if status < 500 else 'failed'}: {status}"


class AuditRecord(Aggregate):
    """One audited request (or operator command). Immutable once recorded.

    ``account_id``/``key_id`` are None when no key was presented or it was refused;
    ``client`` is the client address (``TRUSTED_PROXIES`` applied), None for the CLI;
    ``detail`` holds small facts of the action (for ``ingest``: the main log position its
    observations were committed at and how many were accepted), JSON values only.
    """

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return uuid4()

    @event("Recorded")
    def __init__(
        self,
        action: str,
        at: float,
        status: int,
        outcome: str,
        account_id: str | None,
        key_id: str | None,
        request_id: str | None,
        client: str | None,
        method: str,
        path: str,
        detail: dict[str, Any],
    ) -> None:
        self.action = action
        self.at = at
        self.status = status
        self.outcome = outcome
        self.account_id = account_id
        self.key_id = key_id
        self.request_id = request_id
        self.client = client
        self.method = method
        self.path = path
        self.detail = detail
