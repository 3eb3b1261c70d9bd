"""``GET /v2/analytics/anomalies``: recorded anomalies, from the history read model."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ..application.views import AnomalyQuery
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.anomalies import AnomaliesQuery, AnomalyList

__all__ = ["ANOMALIES", "anomaly_routes"]

ANOMALIES = Operation(
    "GET",
    "listAnomalies",
    "Anomalies the detector recorded in TVL, volumes, fees and prices (most recent first)",
    AnomaliesQuery,
    AnomalyList,
    access="read",
    description="Each is an AnomalyDetected event of the event store (docs/anomalies.md); "
    "live ones stream on the WebSocket's `anomalies` channel.",
)


def anomaly_routes() -> list[OperationRoute]:
    async def anomalies(request: Request, query: AnomaliesQuery) -> Response:
        node: Node = request.app.state.node
        wanted = AnomalyQuery(
            protocol=query.protocol,
            token=query.token,
            measure=query.measure,
            start=query.from_,
            end=query.to,
            min_score=query.min_score,
            limit=query.limit,
        )
        found = await asyncio.to_thread(node.history.anomalies, wanted)
        return json_answer(
            AnomalyList.model_validate({"anomalies": [view.to_json() for view in found]})
        )

    return [OperationRoute("/v2/analytics/anomalies", ANOMALIES.serve(anomalies))]
