"""``defi-realtime audit``: the audit trail, read by an operator (every account's records).

Filters as ``GET /v2/audit`` (the same query model validates them); one JSON object a line
on stdout, newest first, and a table on stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from .console import err
from .container import opened
from .schemas.audit import AuditListQuery, AuditRecordOut
from .settings import Settings

__all__ = ["audit_command"]

_COLUMNS = ("position", "at", "action", "outcome", "account_id", "key_id", "client", "request_id")


def audit_command(
    actor: Annotated[str | None, typer.Option(help="an account id or a key id")] = None,
    action: Annotated[
        str | None, typer.Option(help="an action (alert_rule.create) or a family (alert_rule)")
    ] = None,
    since: Annotated[str | None, typer.Option(help="unix seconds or ISO-8601, inclusive")] = None,
    until: Annotated[str | None, typer.Option(help="unix seconds or ISO-8601, inclusive")] = None,
    account: Annotated[str | None, typer.Option(help="only this account's records")] = None,
    before: Annotated[int | None, typer.Option(help="continue from a previous page's next")] = None,
    recorded: Annotated[
        int | None,
        typer.Option(help="a main log position: the request that recorded the event there"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many records (1-1000)")] = 100,
) -> None:
    """List audit records (state-changing requests and key/account commands), newest first."""
    try:
        scope = None if account is None else str(UUID(account))
    except ValueError:
        err.print(f"[red]--account must be an account id, got {escape(repr(account))}[/red]")
        raise typer.Exit(2) from None
    raw = {
        "actor": actor,
        "action": action,
        "since": since,
        "until": until,
        "before": before,
        "recorded": recorded,
    }
    try:
        query = AuditListQuery.model_validate(
            {name: value for name, value in raw.items() if value is not None} | {"limit": limit}
        )
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "option"
        err.print(f"[red]--{field}: {escape(problem['msg'])}[/red]")
        raise typer.Exit(2) from None
    with opened(Settings()) as container:
        page = container.audit_trail().query(query.to_query(scope))
    rows = [AuditRecordOut.of(view).model_dump(mode="json") for view in page.records]
    table = Table(
        title=f"{len(rows)} audit records"
        + ("" if page.next is None else f" (next: --before {page.next})")
    )
    for column in _COLUMNS:
        table.add_column(column)
    for row in rows:
        when = datetime.fromtimestamp(row["at"], UTC).isoformat(timespec="seconds")
        table.add_row(*(str(({**row, "at": when}).get(column) or "") for column in _COLUMNS))
    err.print(table)
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")
