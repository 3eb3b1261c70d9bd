"""``GET /v2/analytics/mev``: MEV detections not retracted, from the history read model."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ..application.views import MevQuery
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.mev import MevList, MevQueryParams

__all__ = ["MEV", "mev_routes"]

MEV = Operation(
    "GET",
    "listMev",
    "Sandwiches and cyclic arbitrage found in the recorded blocks, with totals",
    MevQueryParams,
    MevList,
    access="read",
    description="Each is a MevDetected event of the event store that no reorg retracted "
    "(docs/onchain.md, ADR 0050).",
)


def mev_routes() -> list[OperationRoute]:
    async def mev(request: Request, query: MevQueryParams) -> Response:
        node: Node = request.app.state.node
        wanted = MevQuery(
            pool=query.pool,
            actor=query.actor,
            from_block=query.from_block,
            to_block=query.to_block,
            kind=query.kind,
            limit=query.limit,
        )
        found, totals = await asyncio.to_thread(node.history.mev, wanted)
        return json_answer(
            MevList.model_validate(
                {"detections": [view.to_json() for view in found], "totals": totals.to_json()}
            )
        )

    return [OperationRoute("/v2/analytics/mev", MEV.serve(mev))]
