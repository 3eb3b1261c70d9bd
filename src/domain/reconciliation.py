"""The record of reconciliation runs: read models checked against the event log.

One aggregate, ``ReconciliationLog``, at a well-known id: each run appends a
``ReconciliationCompleted`` event carrying what was compared, what differed (by store, with
the key, the field, the expected and the found value), what was repaired and what an
upstream DeFiLlama-compatible API reported differently. The event is the run's report;
nothing downstream folds it (the notification log's followers skip it).
"""

from __future__ import annotations

from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

RECONCILIATION_LOG_ID: Final[UUID] = uuid5(NAMESPACE_URL, "https://defi-realtime/reconciliation/")
# The stores a run compares with the log ("upstream": only reported, never repaired).
STORES: Final[tuple[str, ...]] = ("hot", "history", "upstream")


class ReconciliationLog(Aggregate):
    """Every reconciliation run, in order; ``runs`` counts them."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return RECONCILIATION_LOG_ID

    @event("Opened")
    def __init__(self) -> None:
        self.runs = 0

    @event("ReconciliationCompleted")
    def complete(
        self,
        started_at: float,
        completed_at: float,
        positions: dict[str, int],
        compared: dict[str, int],
        discrepancy_counts: dict[str, int],
        discrepancies: list[dict[str, Any]],
        repaired: dict[str, int],
        skipped: dict[str, int],
    ) -> None:
        """A run ended: ``positions`` the log position each store was compared at,
        ``compared`` the keys compared per store, ``discrepancy_counts`` the keys that
        differed per store (``discrepancies`` lists them, at most a bounded number per
        store), ``repaired`` the keys re-applied from the log per store, ``skipped`` the
        keys that moved while being read (compared again next run)."""
        self.runs += 1
