"""``DELETE /v2/account`` (erase the calling key's account) and ``GET /v2/account/export``
(everything held about it, as JSON). docs/privacy.md, docs/adr/0042-crypto-shredding.md.

An erase revokes every key of the account, the calling one included: its sockets close
as any revoked key's do (the revocations travel on the log), and the next request with it
gets 401.
"""

from __future__ import annotations

import asyncio
import dataclasses

from starlette.requests import Request
from starlette.responses import Response

from ..application.app import AccountNotFound
from ..application.privacy import AccountExport as ExportValue
from ..application.privacy import AccountPrivacy, KeyTraces
from .auth import require_key
from .container import provide
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.privacy import AccountErasure, AccountExport

__all__ = ["export_answer", "privacy_routes"]

ERASE = Operation(
    "DELETE",
    "eraseAccount",
    "Erase the key's account: keys revoked, rules and subscriptions deleted, personal data "
    "destroyed (crypto-shredding)",
    NoParameters,
    AccountErasure,
    access="key",
    errors=(404,),
    description="Irreversible. The account's data key is destroyed, so the personal fields "
    "of its events (names, contact, webhook URLs and secrets, email addresses) replay "
    "redacted; the read models and Redis entries that held them are purged. Every key of "
    "the account is revoked, this one included.",
)
EXPORT = Operation(
    "GET",
    "exportAccount",
    "Everything held about the key's account, as JSON (keys without secrets)",
    NoParameters,
    AccountExport,
    access="key",
    errors=(404,),
)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def export_answer(export: ExportValue) -> AccountExport:
    """The answer model of an export (the CLI prints the same JSON)."""
    return AccountExport.model_validate(
        {
            "account": export.account,
            "keys": export.keys,
            "alert_rules": [
                {
                    **dataclasses.asdict(records.rule),
                    "target": records.rule.target,
                    "condition": records.rule.condition,
                    "transitions": [transition.to_json() for transition in records.transitions],
                    "deliveries": [attempt.to_json() for attempt in records.deliveries],
                }
                for records in export.rules
            ],
            "subscriptions": export.subscriptions,
            "exported_at": export.exported_at,
        }
    )


def privacy_routes() -> list[OperationRoute]:
    async def erase(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        node = _node(request)
        privacy: AccountPrivacy = await provide(node.container.privacy)
        try:
            erasure = await node.writer.call(lambda: privacy.erase(key.account_id))
        except AccountNotFound:
            raise ApiError(404, "account_not_found", "the key's account is unknown") from None
        traces: KeyTraces | None = await provide(node.container.key_traces)
        purged = 0 if traces is None else await traces.purge(erasure.key_ids)
        return json_answer(
            AccountErasure.model_validate(dataclasses.replace(erasure, traces_purged=purged))
        )

    async def export(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        privacy: AccountPrivacy = await provide(_node(request).container.privacy)
        try:
            found = await asyncio.to_thread(privacy.export, key.account_id)
        except AccountNotFound:
            raise ApiError(404, "account_not_found", "the key's account is unknown") from None
        return json_answer(export_answer(found))

    return [
        OperationRoute("/v2/account", ERASE.serve(erase)),
        OperationRoute("/v2/account/export", EXPORT.serve(export)),
    ]
