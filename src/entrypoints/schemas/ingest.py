"""``POST /v2/ingest``: the batch a client sends, and what it is told.

The item models describe what ``application.ingest.build_batch`` accepts; they are not run
on the hot path. ``build_batch`` checks each item itself, so that a batch can answer every
rejected item with its index and reason, and commit its valid items when asked to
(``partial``), which a whole-body validation cannot do, at a fraction of its cost.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ...application.ingest import MAX_ITEMS_PER_BATCH
from ...domain.observations import MAX_CHAINS, MAX_NAME_LENGTH, MAX_ORACLES, TOTAL, Metric
from .common import ANSWER, QUERY, CheckedSlug, CheckedTokenId

__all__ = [
    "IngestBody",
    "IngestQuery",
    "IngestResult",
    "Listing",
    "Observation",
    "Price",
    "Rejection",
]

_ITEM = ConfigDict(extra="forbid")
MAX_TEXT = 2_000

ObservedAt = Annotated[
    float | str,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 946_684_800, "exclusiveMaximum": 4_102_444_800},
                {"type": "string", "format": "date-time"},
            ],
            "description": "unix seconds or ISO-8601 (naive means UTC), 2000-01-01 to 2100-01-01",
        }
    ),
]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Not blank: at least one character that is not white space.
Label = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=r"\S")]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
Oracles = Annotated[
    list[Label],
    Field(
        max_length=MAX_ORACLES,
        description="DeFiLlama's oracles: the price oracles the protocol relies on",
    ),
]


class Observation(BaseModel):
    """One protocol metric observation; ``name``/``category``/``chains``/``url``/``oracles``
    list the protocol (needed the first time it is seen)."""

    model_config = _ITEM
    protocol: CheckedSlug
    metric: Metric = "tvl"
    chain: Annotated[Label, Field(description="'total' or a chain name")] = TOTAL
    value: NonNegative
    observed_at: ObservedAt
    source: Text | None = None
    name: Label | None = None
    category: Text | None = None
    chains: Annotated[list[Label], Field(max_length=MAX_CHAINS)] | None = None
    url: Text | None = None
    oracles: Oracles | None = None


class Price(BaseModel):
    """One token price observation."""

    model_config = _ITEM
    token: CheckedTokenId
    price: NonNegative
    observed_at: ObservedAt
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None
    source: Text | None = None


class Listing(BaseModel):
    """A protocol's listing alone (a protocol with untracked TVL)."""

    model_config = _ITEM
    protocol: CheckedSlug
    name: Label
    category: Text | None = None
    chains: Annotated[list[Label], Field(max_length=MAX_CHAINS)] | None = None
    url: Text | None = None
    oracles: Oracles | None = None
    # When the details were true: older details never replace newer ones (ADR 0017).
    observed_at: ObservedAt | None = None


class IngestBody(BaseModel):
    """A batch: at most ``MAX_ITEMS_PER_BATCH`` items in all, at least one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"minItems": 1}}}
                for name in ("observations", "prices", "listings")
            ]
        },
    )
    observations: Annotated[list[Observation], Field(max_length=MAX_ITEMS_PER_BATCH)] = []
    prices: Annotated[list[Price], Field(max_length=MAX_ITEMS_PER_BATCH)] = []
    listings: Annotated[list[Listing], Field(max_length=MAX_ITEMS_PER_BATCH)] = []
    partial: bool = Field(
        default=False,
        description="commit the valid items of a batch that has rejected ones "
        "(default: a rejected item fails the whole batch)",
    )


class IngestQuery(BaseModel):
    """``POST /v2/ingest?partial=true``: the same as ``partial`` in the body (which wins).
    Its value is read by the ingest handler with the body's; this model names it (an
    unknown parameter is refused) and documents it."""

    model_config = QUERY
    partial: Annotated[
        str | None,
        WithJsonSchema({"type": "boolean", "description": "as partial in the body"}),
    ] = None


class Rejection(BaseModel):
    """An item that was not accepted, and why."""

    model_config = ANSWER
    kind: Literal["observation", "price", "listing"]
    index: int = Field(description="its index in its list")
    field: str | None = Field(description="the field at fault, when one is")
    reason: str


class IngestResult(BaseModel):
    """What a batch did. A 422 ``invalid_items`` error carries this in its details."""

    model_config = ANSWER
    accepted: int
    duplicates: int = Field(description="identical to what was recorded: nothing changed")
    rejected: int
    errors: list[Rejection]
    committed: bool
    position: int = Field(description="the highest log position the batch wrote")
