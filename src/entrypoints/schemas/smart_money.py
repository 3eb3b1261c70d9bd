"""``GET /v2/analytics/smart-money``: a chain's wallets ranked, with the features behind
each score (docs/onchain.md, ADR 0051)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, StringConstraints

from .common import ANSWER, QUERY

__all__ = [
    "MAX_WALLETS",
    "SmartMoneyList",
    "SmartMoneyModelInfo",
    "SmartMoneyQueryParams",
    "WalletFeaturesRecord",
    "WalletScoreRecord",
]

MAX_WALLETS: Final = 500
EvmAddress = Annotated[
    str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{40}$", to_lower=True, strip_whitespace=True)
]


class SmartMoneyQueryParams(BaseModel):
    model_config = QUERY
    chain_id: Annotated[int, Field(gt=0)] | None = Field(
        None, alias="chainId", description="the EVM chain (optional when one is followed)"
    )
    wallet: EvmAddress | None = Field(None, description="one wallet's profile and rank")
    ranking: Literal["default", "model"] = Field(
        "default",
        description="default: the documented formula; model: the trained model's probability",
    )
    limit: Annotated[int, Field(ge=1, le=MAX_WALLETS)] = 20


class WalletFeaturesRecord(BaseModel):
    """What the wallet's recorded swaps and transfers show (USD at the trades' prices)."""

    model_config = ANSWER
    realised_pnl_usd: float = Field(description="gains of disposals by swap, FIFO cost")
    unrealised_pnl_usd: float = Field(description="what is held, at the latest price")
    roi: float = Field(description="(realised + unrealised) / USD spent buying")
    win_rate: float = Field(description="share of closing trades that gained")
    closed_trades: int
    trades: int = Field(description="swaps")
    avg_holding_hours: float = Field(description="cost-weighted, over closed positions")
    early_entry_share: float = Field(
        description="tokens bought among the first quarter of their buyers that then rose 20 %"
    )
    volume_usd: float
    bought_usd: float
    early_entries: int
    tokens_bought: int
    pools: list[str]
    first_block: int
    last_block: int


class DefaultTerms(BaseModel):
    """The default score's terms: score = 100 x confidence x (win_rate + early_entry + roi)."""

    model_config = ANSWER
    confidence: float
    win_rate: float
    early_entry: float
    roi: float


class WalletScoreRecord(BaseModel):
    model_config = ANSWER
    wallet: str
    rank: int = Field(description="1 is the best, by the ranking asked for")
    score: float = Field(description="0..100 by the ranking asked for")
    default_score: float = Field(alias="defaultScore")
    default_terms: DefaultTerms = Field(alias="defaultTerms")
    model_probability: float | None = Field(
        alias="modelProbability", description="null: no model trained"
    )
    model_contributions: dict[str, float] | None = Field(
        alias="modelContributions", description="each feature's share of the model's log-odds"
    )
    features: WalletFeaturesRecord


class SmartMoneyModelInfo(BaseModel):
    """The trained model (its metrics are on the user's held-out labelled wallets)."""

    model_config = ANSWER
    version: int
    trained_at: float = Field(alias="trainedAt")
    features: list[str]
    metrics: dict[str, float]
    labelled: dict[str, int]


class SmartMoneyList(BaseModel):
    """A chain's wallets ranked (or one wallet, with ``wallet``)."""

    model_config = ANSWER
    chain_id: int = Field(alias="chainId")
    ranking: Literal["default", "model"]
    formula: str = Field(description="the default score, as a formula")
    wallets_ranked: int = Field(alias="walletsRanked", description="wallets with a swap")
    model: SmartMoneyModelInfo | None
    wallets: list[WalletScoreRecord]
