"""``GET /v2/analytics/smart-money``: wallets ranked by their trades (ADR 0051)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from ..application.smart_money_reader import NoModel, UnknownChain
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.smart_money import SmartMoneyList, SmartMoneyQueryParams

__all__ = ["SMART_MONEY", "smart_money_routes"]

SMART_MONEY = Operation(
    "GET",
    "listSmartMoney",
    "Wallets ranked by their recorded trades, with the features behind each score",
    SmartMoneyQueryParams,
    SmartMoneyList,
    access="read",
    errors=(404, 409),
    description="Features from the swaps and transfers of live (not orphaned) blocks; the "
    "default ranking is a documented formula, the model ranking the user's trained model "
    "(docs/onchain.md, ADR 0051). With wallet: that wallet alone (404 if it never traded).",
)


def smart_money_routes() -> list[OperationRoute]:
    async def smart_money(request: Request, query: SmartMoneyQueryParams) -> Response:
        node: Node = request.app.state.node
        try:
            ranked = await asyncio.to_thread(
                node.smart_money.rank,
                query.chain_id,
                ranking=query.ranking,
                limit=query.limit,
                wallet=query.wallet,
            )
        except UnknownChain as error:
            raise ApiError(404, "unknown_chain", str(error), {"parameter": "chainId"}) from None
        except NoModel as error:
            raise ApiError(409, "no_model", str(error), {"parameter": "ranking"}) from None
        if query.wallet is not None and not ranked.wallets:
            raise ApiError(404, "unknown_wallet", f"wallet {query.wallet} has no recorded trade")
        return json_answer(SmartMoneyList.model_validate(ranked.to_json()))

    return [OperationRoute("/v2/analytics/smart-money", SMART_MONEY.serve(smart_money))]
