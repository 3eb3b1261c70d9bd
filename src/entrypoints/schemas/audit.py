"""``GET /v2/audit``: the audit trail, filtered."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, Field

from ...application.audit import AUDIT_PAGE_MAX, AuditQuery, AuditView
from .common import ANSWER, QUERY, QueryTime

__all__ = ["AuditListQuery", "AuditRecordList", "AuditRecordOut"]


class AuditListQuery(BaseModel):
    model_config = QUERY
    actor: UUID | None = Field(None, description="an account id or an API key id")
    action: Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)?$", max_length=64)] | None = Field(
        None,
        description="an action (`alert_rule.create`) or a family of them (`alert_rule`)",
    )
    since: QueryTime = Field(None, description="recorded at or after")
    until: QueryTime = Field(None, description="recorded at or before")
    before: Annotated[int, Field(ge=1)] | None = Field(
        None, description="continue from the previous page's `next`"
    )
    recorded: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="a main log position: only the record of the request that recorded "
        "the event there (who sent an observation)",
    )
    limit: Annotated[int, Field(ge=1, le=AUDIT_PAGE_MAX)] = 100

    def to_query(self, account_id: str | None) -> AuditQuery:
        """The read model's query: only ``account_id``'s records (None: everyone's)."""
        return AuditQuery(
            account_id=account_id,
            actor=None if self.actor is None else str(self.actor),
            action=self.action,
            since=self.since,
            until=self.until,
            before=self.before,
            recorded=self.recorded,
            limit=self.limit,
        )


class AuditRecordOut(BaseModel):
    """One audited request (docs/audit.md)."""

    model_config = ANSWER
    position: int = Field(description="the audit log's position (newest first)")
    id: UUID
    action: str = Field(examples=["alert_rule.create"])
    at: float = Field(description="unix seconds, when the answer was sent")
    status: int = Field(description="the HTTP status of the answer")
    outcome: str = Field(examples=["ok", "rejected: 422"])
    account_id: UUID | None = Field(description="the caller's account (None: no valid key)")
    key_id: UUID | None = Field(description="the key the caller presented (None: none valid)")
    request_id: str | None
    client: str | None = Field(description="the client address (TRUSTED_PROXIES applied)")
    method: str
    path: str
    detail: dict[str, Any] = Field(
        description="facts of the action; for `ingest` the counts, the main log `position` "
        "its observations can be read at, and `recorded`: the `[first, last]` ranges of the "
        "main log positions of the events it recorded"
    )

    @classmethod
    def of(cls, view: AuditView) -> AuditRecordOut:
        return cls.model_validate({"position": view.position, "id": view.id, **view.entry.fields()})


class AuditRecordList(BaseModel):
    model_config = ANSWER
    records: list[AuditRecordOut]
    next: int | None = Field(description="the `before` of the next page; None: last page")
