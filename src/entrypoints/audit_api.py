"""The audit trail over HTTP: ``AuditRequests`` records every state-changing request, and
``GET /v2/audit`` lists the records (docs/audit.md, ADR 0041).

Which requests change state is a table of operation ids (``AUDITED``): the middleware finds
the route's operation for the request (even one refused before routing, by authentication
or a rate limit) and records it when the answer starts, with the caller's account and key,
the request id, the client address, the status and its outcome. The answer is sent only
after its record is stored.

A key sees its own account's records; a key listed in ``ADMIN_KEY_IDS`` sees everyone's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..application.audit import AuditEntry, AuditJournal
from ..application.audit_trail import AuditTrail
from ..domain.audit import outcome_of
from .auth import KeyHolder, require_key
from .client_address import Network, client_address
from .logs import REQUEST_ID
from .operations import Operation, OperationRoute, json_answer
from .schemas.audit import AuditListQuery, AuditRecordList, AuditRecordOut
from .settings import Settings

__all__ = ["AUDITED", "AUDIT_DETAIL", "AuditRequests", "audit_routes"]

log = logging.getLogger(__name__)

# The state-changing operations, by operation id, and the action each is recorded as.
AUDITED: Final[Mapping[str, str]] = {
    "ingest": "ingest",
    "createAlertRule": "alert_rule.create",
    "updateAlertRule": "alert_rule.update",
    "deleteAlertRule": "alert_rule.delete",
    "pauseAlertRule": "alert_rule.pause",
    "resumeAlertRule": "alert_rule.resume",
    "redriveAlertDeadLetters": "alert_rule.redrive",
    "createSubscription": "subscription.create",
    "deleteSubscription": "subscription.delete",
    "createSessionToken": "auth.token",
    "createKey": "keys.create",
    "rotateKey": "keys.rotate",
    "revokeKey": "keys.revoke",
    "eraseAccount": "accounts.erase",
}
# A longer path (up to the HTTP edge's limit) is cut: the record is not a request log.
MAX_PATH: Final = 2_000
# ``request.state`` attribute a handler sets to add facts to its audit record.
AUDIT_DETAIL: Final = "audit_detail"


class AuditRequests:
    """ASGI middleware: an ``AuditEntry`` for each request to an ``AUDITED`` operation,
    stored (``AuditJournal``, found in ``app.state.audit_journal``) before the answer
    starts. Placed outside authentication and the rate limits, so their refusals are
    recorded too (with no account when no valid key was presented)."""

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute], proxies: Sequence[Network]
    ) -> None:
        self.app = app
        self.routes = [route for route in routes if isinstance(route, OperationRoute)]
        self.proxies = tuple(proxies)

    def action(self, scope: Scope) -> str | None:
        """The action ``scope``'s request performs, None when it changes nothing."""
        method = scope["method"]
        if method in ("GET", "HEAD", "OPTIONS"):
            return None
        path = scope["path"]
        for route in self.routes:
            if route.path_regex.match(path):
                for operation in route.operations:
                    if operation.method == method:
                        return AUDITED.get(operation.operation_id)
                return None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        action = self.action(scope)
        journal: AuditJournal | None = getattr(scope["app"].state, "audit_journal", None)
        if action is None or journal is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def send_after_recording(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                await self._record(journal, scope, action, message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_after_recording)
        except Exception:
            if not started:  # answered 500 by the outermost error middleware
                await self._record(journal, scope, action, 500)
            raise

    async def _record(self, journal: AuditJournal, scope: Scope, action: str, status: int) -> None:
        user = scope.get("user")
        key = user.key if isinstance(user, KeyHolder) else None
        peer = scope.get("client")
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        detail = scope.get("state", {}).get(AUDIT_DETAIL) or {}
        entry = AuditEntry(
            action=action,
            at=time.time(),
            status=status,
            outcome=outcome_of(status),
            account_id=None if key is None else str(key.account_id),
            key_id=None if key is None else str(key.id),
            request_id=REQUEST_ID.get(),
            client=client_address(None if peer is None else peer[0], headers, self.proxies),
            method=scope["method"],
            path=scope["path"][:MAX_PATH],
            detail=dict(detail),
        )
        try:
            await journal.record(entry)
        except Exception:
            # The change (if any) is made and cannot be taken back: answer, and say loudly
            # that its record is missing (ADR 0041).
            log.exception("audit record of %s %s not stored", entry.method, entry.path)


LIST_AUDIT = Operation(
    "GET",
    "listAuditRecords",
    "The audit trail: state-changing requests, newest first",
    AuditListQuery,
    AuditRecordList,
    access="key",
    description="A key sees its own account's records; an admin key (`ADMIN_KEY_IDS`) "
    "sees everyone's. Each record names the account and key, request id, client address, "
    "action, HTTP status and outcome (`ok`, `rejected: 422`, ...). Pages continue with "
    "`before=<next>`.",
)


def audit_routes() -> list[OperationRoute]:
    async def list_audit(request: Request, query: AuditListQuery) -> Response:
        key = require_key(request)
        settings: Settings = request.app.state.settings
        trail: AuditTrail = request.app.state.audit_trail
        admin = key.id in settings.admin_keys
        wanted = query.to_query(None if admin else str(key.account_id))
        page = await asyncio.to_thread(trail.query, wanted)
        return json_answer(
            AuditRecordList(
                records=[AuditRecordOut.of(view) for view in page.records], next=page.next
            )
        )

    return [OperationRoute("/v2/audit", LIST_AUDIT.serve(list_audit))]
