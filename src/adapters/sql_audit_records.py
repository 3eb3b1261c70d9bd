"""``AuditRecords`` on SQLAlchemy 2 Core: the ``audit_records`` table of the history schema.

Same database and Alembic revisions as the history read model (SQLite file embedded,
PostgreSQL in production). The table is its own position: the highest ``position`` held is
where the copy from the audit log resumes, and a row already held (two nodes catching up at
once) is skipped by the primary key (``ON CONFLICT DO NOTHING``), so applying is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from ..application.audit import (
    AuditEntry,
    AuditPage,
    AuditQuery,
    AuditView,
    recorded,
    recorded_spans,
)
from .sql_schema import AUDIT_RECORDS, adapter_engine, close_engine, write_transaction

__all__ = ["SqlAuditRecords"]

_T = AUDIT_RECORDS.c


class SqlAuditRecords:
    """Implements ``AuditRecords`` (synchronous: call it from a worker thread)."""

    def __init__(self, target: str | Engine) -> None:
        # A URL: its own engine; the process's shared engine otherwise (sql_schema).
        self._engine, self._owns_engine = adapter_engine(target)

    @property
    def engine(self) -> Engine:
        return self._engine

    def position(self) -> int:
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.max(_T.position))).scalar() or 0)

    def apply(self, views: Sequence[AuditView]) -> None:
        if not views:
            return
        rows = [_row(view) for view in views]
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(AUDIT_RECORDS).on_conflict_do_nothing(
            index_elements=["position"]
        )
        with write_transaction(self._engine) as connection:
            connection.execute(statement, rows)

    def query(self, query: AuditQuery) -> AuditPage:
        conditions: list[ColumnElement[bool]] = []
        if query.account_id is not None:
            conditions.append(_T.account_id == query.account_id)
        if query.actor is not None:
            conditions.append(or_(_T.account_id == query.actor, _T.key_id == query.actor))
        if query.action is not None:
            # An exact action, or a family: "alert_rule" is every "alert_rule.*".
            conditions.append(
                or_(_T.action == query.action, _T.action.startswith(f"{query.action}."))
            )
        if query.since is not None:
            conditions.append(_T.at >= query.since)
        if query.until is not None:
            conditions.append(_T.at <= query.until)
        if query.before is not None:
            conditions.append(_T.position < query.before)
        if query.recorded is not None:
            # The span finds the candidates (the requests of one commit group overlap);
            # their exact ranges decide.
            conditions.append(_T.recorded_last >= query.recorded)
            conditions.append(_T.recorded_first <= query.recorded)
        statement = select(AUDIT_RECORDS).where(*conditions).order_by(_T.position.desc())
        if query.recorded is None:  # else: the few requests of one commit group, all read
            statement = statement.limit(query.limit + 1)  # one more: is there a next page?
        with self._engine.connect() as connection:
            rows = connection.execute(statement).mappings().all()
        if query.recorded is not None:
            wanted = query.recorded
            rows = [row for row in rows if recorded(row["detail"], wanted)]
        views = [_view(row) for row in rows[: query.limit]]
        more = len(rows) > query.limit
        return AuditPage(records=views, next=views[-1].position if more and views else None)

    def close(self) -> None:
        if self._owns_engine:
            close_engine(self._engine)


def _row(view: AuditView) -> dict[str, Any]:
    spans = recorded_spans(view.entry.detail)
    return {
        "position": view.position,
        "id": str(view.id),
        **view.entry.fields(),
        "recorded_first": min((first for first, _ in spans), default=None),
        "recorded_last": max((last for _, last in spans), default=None),
    }


def _view(row: Any) -> AuditView:
    return AuditView(
        position=int(row["position"]), id=UUID(row["id"]), entry=AuditEntry.from_fields(row)
    )
