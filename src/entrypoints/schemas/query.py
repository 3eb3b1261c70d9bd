"""``POST /v2/query``: one aggregate query (filters, groups, measures, top-N, time buckets,
``asOf``/``knownAt``) and its answer."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ...application.aggregate import MAX_BUCKETS, BucketName, GroupBy, MetricName, Op
from ...domain.chains import chain_key
from .common import ANSWER, CheckedSlug, QueryText, QueryTime
from .protocols import KnownAt

__all__ = ["AggregateAnswer", "AggregateBody"]

BODY = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
MAX_VALUES = 1_000


def _casefolded(values: list[str] | None) -> list[str] | None:
    return None if values is None else [value.casefold() for value in values]


def _chain_keys(values: list[str] | None) -> list[str] | None:
    return None if values is None else [chain_key(value) for value in values]


class Filters(BaseModel):
    model_config = BODY
    chains: Annotated[
        list[QueryText] | None,
        Field(max_length=MAX_VALUES, description="on any of these chains (any spelling)"),
        AfterValidator(_chain_keys),
    ] = None
    categories: Annotated[
        list[QueryText] | None,
        Field(max_length=MAX_VALUES, description="in any of these categories (any case)"),
        AfterValidator(_casefolded),
    ] = None
    protocols: Annotated[
        list[CheckedSlug] | None, Field(max_length=MAX_VALUES, description="these slugs")
    ] = None
    min_tvl: Annotated[
        float | None, Field(alias="minTvl", ge=0, allow_inf_nan=False, description="USD")
    ] = None


class MeasureBody(BaseModel):
    model_config = BODY
    op: Op
    metric: MetricName = "tvl"


class Top(BaseModel):
    model_config = BODY
    n: Annotated[int, Field(ge=1, le=MAX_VALUES, description="how many protocols")]
    by: MetricName = "tvl"
    per: Literal["overall", "group"] = "overall"


class AggregateBody(BaseModel):
    """Bad queries are a 400 naming the field."""

    model_config = BODY
    filters: Filters = Filters()
    group_by: Annotated[GroupBy | None, Field(alias="groupBy")] = None
    measures: Annotated[list[MeasureBody], Field(min_length=1, max_length=12)] = [
        MeasureBody(op="sum", metric="tvl")
    ]
    top: Top | None = None
    bucket: Annotated[
        BucketName | None,
        Field(description=f"one answer per bucket from start to end (at most {MAX_BUCKETS})"),
    ] = None
    start: Annotated[QueryTime, Field(description="the first bucket's time (with bucket)")] = None
    end: Annotated[QueryTime, Field(description="the last bucket's time (with bucket)")] = None
    as_of: Annotated[QueryTime, Field(alias="asOf", description="the state at this time")] = None
    known_at: Annotated[KnownAt, Field(alias="knownAt")] = None

    @model_validator(mode="after")
    def _buckets_need_a_range(self) -> Self:
        if self.bucket is None:
            if self.start is not None or self.end is not None:
                raise ValueError("start and end go with bucket")
        elif self.start is None or self.end is None:
            raise ValueError("bucket needs start and end")
        elif self.end < self.start:
            raise ValueError("end is before start")
        return self


class TopItem(BaseModel):
    model_config = ANSWER
    slug: str
    tvl: float | None
    volume_24h: float | None
    fees_24h: float | None


class GroupAnswer(BaseModel):
    model_config = ANSWER
    key: str = Field(description="the group (a chain, category or slug); 'all' without groupBy")
    protocols: int = Field(description="protocols in the group")
    measures: dict[str, float | None] = Field(description="by '<op>_<metric>'")
    top: list[TopItem]


class BucketAnswer(BaseModel):
    model_config = ANSWER
    start: float
    groups: list[GroupAnswer]


class AggregateAnswer(BaseModel):
    model_config = ANSWER
    groups: list[GroupAnswer] | None = Field(description="without bucket")
    buckets: list[BucketAnswer] | None = Field(description="with bucket, oldest first")
    position: int = Field(description="the log position the answer was computed at")
    asOf: float | None
    knownAt: int | None
    cached: bool = Field(description="whether the answer came from the cache")
