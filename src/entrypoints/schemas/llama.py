"""DeFiLlama's own shapes (``api.llama.fi``): same paths, field names and units.

A DeFiLlama client pointed at this server reads these as it reads DeFiLlama. Fields
DeFiLlama fills from data we do not hold (logos, audits, token symbols, market caps,
Twitter handles...) are present and null, so code that indexes them does not break; see
docs/defillama-api.md and ADR 0019 for what each answer is made of.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, RootModel

from ...domain.chains import canonical_chain
from .common import ANSWER, QUERY, QueryText, SlugText

__all__ = [
    "ChainPath",
    "LlamaChain",
    "LlamaChainSeries",
    "LlamaChains",
    "LlamaDatedTvl",
    "LlamaHistoricalTvl",
    "LlamaProtocol",
    "LlamaProtocolDetail",
    "LlamaProtocols",
    "LlamaTvl",
    "LlamaTvlPoint",
]

_NOT_HELD = "null: not held by this server"


def _not_held() -> Any:
    return Field(default=None, description=_NOT_HELD)


class ChainPath(BaseModel):
    """``{chain}``: any spelling or alias of a chain (``solana``, ``Binance``)."""

    model_config = QUERY
    chain: Annotated[
        QueryText, AfterValidator(canonical_chain), Field(description="a chain name, any case")
    ]


class LlamaProtocol(BaseModel):
    """One protocol of ``GET /protocols`` (DeFiLlama's "lite" listing)."""

    model_config = ANSWER
    id: str = Field(description="the slug (DeFiLlama uses a number here)")
    name: str
    address: None = _not_held()
    symbol: None = _not_held()
    url: str
    description: None = _not_held()
    chain: str = Field(description="the protocol's one chain, or 'Multi-Chain'")
    logo: None = _not_held()
    audits: None = _not_held()
    audit_note: None = _not_held()
    gecko_id: None = _not_held()
    cmcId: None = _not_held()
    category: str
    chains: list[str]
    module: None = _not_held()
    twitter: None = _not_held()
    forkedFrom: None = _not_held()
    oracles: list[str] = Field(description="the price oracles the protocol relies on")
    listedAt: None = _not_held()
    methodology: None = _not_held()
    slug: SlugText
    tvl: float | None = Field(description="USD, without the extra sections (staking, borrowed)")
    chainTvls: dict[str, float] = Field(description="USD per chain, where it is known")
    change_1h: float | None = Field(description="percent")
    change_1d: float | None = Field(description="percent")
    change_7d: float | None = Field(description="percent")
    tokenBreakdowns: dict[str, Any] = Field(default_factory=dict, description="empty: not held")
    mcap: None = _not_held()


class LlamaProtocols(RootModel[list[LlamaProtocol]]):
    """Every listed protocol, the largest TVL first."""


class LlamaTvlPoint(BaseModel):
    model_config = ANSWER
    date: int = Field(description="unix seconds, 00:00 UTC of the day")
    totalLiquidityUSD: float = Field(description="the day's last observation, USD")


class LlamaChainSeries(BaseModel):
    model_config = ANSWER
    tvl: list[LlamaTvlPoint]
    tokens: None = _not_held()
    tokensInUsd: None = _not_held()


class LlamaProtocolDetail(BaseModel):
    """``GET /protocol/{slug}``: the listing, current TVL per chain and the daily history."""

    model_config = ANSWER
    id: str = Field(description="the slug")
    name: str
    url: str
    description: None = _not_held()
    logo: None = _not_held()
    chains: list[str]
    chain: str = Field(description="the protocol's one chain, or 'Multi-Chain'")
    gecko_id: None = _not_held()
    cmcId: None = _not_held()
    twitter: None = _not_held()
    category: str
    slug: SlugText
    symbol: None = _not_held()
    address: None = _not_held()
    oracles: list[str] = Field(description="the price oracles the protocol relies on")
    mcap: None = _not_held()
    methodology: None = _not_held()
    currentChainTvls: dict[str, float] = Field(description="USD per chain, where it is known")
    chainTvls: dict[str, LlamaChainSeries] = Field(description="each chain's daily history")
    tvl: list[LlamaTvlPoint] = Field(description="the total's daily history, oldest first")
    tokens: None = _not_held()
    tokensInUsd: None = _not_held()
    isParentProtocol: bool = False
    hallmarks: list[Any] = Field(default_factory=list, description="empty: not held")


class LlamaTvl(RootModel[float]):
    """``GET /tvl/{slug}``: the current TVL, a bare number (USD)."""


class LlamaChain(BaseModel):
    """One chain of ``GET /v2/chains``."""

    model_config = ANSWER
    gecko_id: str | None
    tvl: float = Field(description="USD: the sum of the chain's protocols (see the docs)")
    tokenSymbol: str | None
    cmcId: str | None
    name: str
    chainId: int | None


class LlamaChains(RootModel[list[LlamaChain]]):
    """Every chain with TVL, the largest first."""


class LlamaDatedTvl(BaseModel):
    model_config = ANSWER
    date: int = Field(description="unix seconds, 00:00 UTC of the day")
    tvl: float = Field(description="USD")


class LlamaHistoricalTvl(RootModel[list[LlamaDatedTvl]]):
    """Daily TVL, oldest first."""
