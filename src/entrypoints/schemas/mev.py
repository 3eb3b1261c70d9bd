"""``GET /v2/analytics/mev``: the MEV detections not retracted, with totals."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from .common import ANSWER, QUERY

__all__ = ["MAX_MEV", "MevList", "MevQueryParams", "MevRecord", "MevTotalsRecord"]

MAX_MEV: Final = 1_000
EvmAddress = Annotated[
    str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$", to_lower=True, strip_whitespace=True)
]
Block = Annotated[int, Field(ge=0)]


class MevQueryParams(BaseModel):
    model_config = QUERY
    pool: EvmAddress | None = Field(None, description="only this pool (0x address)")
    actor: EvmAddress | None = Field(None, description="only this actor (swap recipient)")
    kind: Literal["sandwich", "arbitrage"] | None = None
    from_block: Block | None = Field(None, alias="fromBlock", description="block at least")
    to_block: Block | None = Field(None, alias="toBlock", description="block at most")
    limit: Annotated[int, Field(ge=1, le=MAX_MEV)] = 100

    @model_validator(mode="after")
    def _ordered(self) -> MevQueryParams:
        if (
            self.from_block is not None
            and self.to_block is not None
            and self.from_block > self.to_block
        ):
            raise ValueError("fromBlock must not be after toBlock")
        return self


class MevRecord(BaseModel):
    """One MevDetected fact not retracted by a reorg (docs/onchain.md, ADR 0050)."""

    model_config = ANSWER
    key: str = Field(description="kind:block hash:transaction hashes")
    position: int = Field(description="the event store's position of the detection")
    chain_id: int = Field(alias="chainId")
    kind: Literal["sandwich", "arbitrage"]
    block: int
    block_hash: str = Field(alias="blockHash")
    pool: str = Field(description="the sandwiched pool, or an arbitrage's first pool")
    actor: str = Field(description="the swap recipient that gained")
    victim: str | None = Field(description="the sandwiched trader (null: arbitrage)")
    quote_token: str = Field(alias="quoteToken", description="the token the profit is in")
    profit: str = Field(description="gross profit in raw units of the quote token")
    profit_quote: float = Field(alias="profitQuote", description="in quote-token units")
    profit_usd: float | None = Field(alias="profitUsd", description="null: no price")
    tx_hashes: list[str] = Field(alias="txHashes")


class MevTotalsRecord(BaseModel):
    """What every matching detection adds up to (not only the page)."""

    model_config = ANSWER
    detections: int
    sandwiches: int
    arbitrages: int
    profit_usd: float = Field(alias="profitUsd", description="of those with a USD price")


class MevList(BaseModel):
    """Live MEV detections, the most recent block first, and their totals."""

    model_config = ANSWER
    detections: list[MevRecord]
    totals: MevTotalsRecord
