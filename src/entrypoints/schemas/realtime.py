"""``/v2/realtime/tvl|volumes|prices``: the latest values, as the WebSocket streams them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from ...application.views import MAX_PAGE
from .common import ANSWER, QUERY, ProtocolIds, SlugText, TokenIds, TokenIdText

__all__ = [
    "PriceEntry",
    "PriceSnapshot",
    "RealtimePricesQuery",
    "RealtimeProtocolsQuery",
    "TvlEntry",
    "TvlSnapshot",
    "VolumeEntry",
    "VolumeSnapshot",
]

RealtimeLimit = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_PAGE,
        description="how many entries to report when no ids are named; next to ids it "
        "changes nothing but is still checked",
    ),
]


class RealtimeProtocolsQuery(BaseModel):
    """``/v2/realtime/tvl`` and ``/v2/realtime/volumes``: named protocols, or the top."""

    model_config = QUERY
    protocol_ids: Annotated[
        ProtocolIds,
        Field(
            alias="protocolIds",
            description=f"protocol slugs (at most {MAX_PAGE}), reported in the order given, "
            "unknown ones left out; absent or empty: the top `limit` protocols",
        ),
    ] = None
    limit: RealtimeLimit = 100


class RealtimePricesQuery(BaseModel):
    """``/v2/realtime/prices``: named tokens, or the most recently updated."""

    model_config = QUERY
    tokens: Annotated[
        TokenIds,
        Field(
            description=f"token ids such as coingecko:ethereum (at most {MAX_PAGE}), reported "
            "in the order given, unknown ones left out; absent or empty (and no tokenIds): "
            "the `limit` most recently updated tokens, newest first"
        ),
    ] = None
    token_ids: Annotated[
        TokenIds,
        Field(alias="tokenIds", description="the same as tokens, read when tokens is empty"),
    ] = None
    limit: RealtimeLimit = 100

    @property
    def named(self) -> list[str] | None:
        """The tokens asked for (``tokens``, else ``tokenIds``); None: the latest ones."""
        return self.tokens or self.token_ids


class TvlEntry(BaseModel):
    """A protocol's latest total TVL."""

    model_config = ANSWER
    id: SlugText
    value: float | None
    timestamp: float | None = Field(description="unix time the tvl was observed at")
    change24h: float | None = Field(description="percent")
    change1h: float | None = Field(description="percent")
    position: int


class TvlSnapshot(BaseModel):
    model_config = ANSWER
    data: list[TvlEntry]


class VolumeEntry(BaseModel):
    """A protocol's latest 24h volume and fees."""

    model_config = ANSWER
    id: SlugText
    volume_24h: float | None
    fees_24h: float | None
    volume_24h_at: float | None = Field(description="unix time the volume was observed at")
    fees_24h_at: float | None = Field(description="unix time the fees were observed at")
    position: int


class VolumeSnapshot(BaseModel):
    model_config = ANSWER
    data: list[VolumeEntry]


class PriceEntry(BaseModel):
    """A token's latest price."""

    model_config = ANSWER
    token: TokenIdText
    price: float
    timestamp: float = Field(validation_alias="observed_at")
    confidence: float | None
    change24h: float | None = Field(validation_alias="change_24h", description="percent")
    position: int


class PriceSnapshot(BaseModel):
    model_config = ANSWER
    data: list[PriceEntry]
