"""The audit trail's read side: the ``AuditRecords`` read model (``audit_records``), filled
from the audit log before each query is answered, so a query sees every record stored
before it (docs/adr/0041-audit-trail-in-its-own-log.md)."""

from __future__ import annotations

from typing import Final

from .audit import AuditLog, AuditPage, AuditQuery
from .ports import AuditRecords

__all__ = ["AuditTrail"]

# How many audit events one catch-up step reads (a query catches up at most
# ``_CATCH_UP_STEPS`` of them, then answers from what the read model holds).
_CATCH_UP_PAGE: Final = 1_000
_CATCH_UP_STEPS: Final = 100


class AuditTrail:
    """The read side: the ``AuditRecords`` read model, kept up with the audit log."""

    def __init__(self, log: AuditLog, records: AuditRecords) -> None:
        self._log = log
        self._records = records

    def catch_up(self) -> int:
        """Copy the audit log's new records into the read model; its position after."""
        position = self._records.position()
        for _ in range(_CATCH_UP_STEPS):
            views = self._log.read(position, _CATCH_UP_PAGE)
            if not views:
                break
            self._records.apply(views)
            position = views[-1].position
        return position

    def query(self, query: AuditQuery) -> AuditPage:
        """The records ``query`` selects, newest first, after catching up (synchronous)."""
        self.catch_up()
        return self._records.query(query)
