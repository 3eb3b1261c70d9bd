"""``GET /v2/reconciliation/latest``: the last reconciliation run (ADR 0035)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .common import ANSWER

__all__ = ["ReconciliationDiscrepancy", "ReconciliationRun"]


class ReconciliationDiscrepancy(BaseModel):
    """One key whose stored value differed from the log's (or from upstream's)."""

    model_config = ANSWER
    store: str = Field(description="hot, history or upstream")
    key: str = Field(
        description="protocol:<slug>, token:<id>, series:<slug>/<metric>/<chain> or row:<position>"
    )
    field: str = Field(description="what differed")
    expected: str | float | None = Field(description="the log's value (None: absent)")
    found: str | float | None = Field(description="the store's value (None: absent)")


class ReconciliationRun(BaseModel):
    """A run as ``ReconciliationCompleted`` recorded it."""

    model_config = ANSWER
    run: int = Field(description="the run's number, from 1")
    startedAt: float
    completedAt: float
    positions: dict[str, int] = Field(description="the log position each store was compared at")
    compared: dict[str, int] = Field(description="keys and rows compared, per store")
    discrepancyCounts: dict[str, int] = Field(description="discrepancies per store")
    discrepancies: list[ReconciliationDiscrepancy] = Field(
        description="the discrepancies, at most 100 per store"
    )
    repaired: dict[str, int] = Field(description="keys re-applied from the log, per store")
    skipped: dict[str, int] = Field(
        description="keys that moved while being read (compared again next run), per store"
    )
