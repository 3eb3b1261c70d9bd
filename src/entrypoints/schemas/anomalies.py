"""``GET /v2/analytics/anomalies``: the anomalies the detector recorded."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, Field, model_validator

from .common import ANSWER, QUERY, CheckedSlug, CheckedTokenId, QueryTime

__all__ = ["MAX_ANOMALIES", "AnomaliesQuery", "AnomalyList", "AnomalyRecord"]

MAX_ANOMALIES: Final = 1_000
AnomalyMeasure = Literal["tvl", "volume_24h", "fees_24h", "price"]


class AnomaliesQuery(BaseModel):
    model_config = QUERY
    protocol: CheckedSlug | None = Field(None, description="only this protocol's series")
    token: CheckedTokenId | None = Field(None, description="only this token's price")
    measure: AnomalyMeasure | None = None
    from_: QueryTime = Field(None, alias="from", description="observed at or after")
    to: QueryTime = Field(None, description="observed at or before")
    min_score: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, alias="minScore", description="score at least (standard deviations)"
    )
    limit: Annotated[int, Field(ge=1, le=MAX_ANOMALIES)] = 100

    @model_validator(mode="after")
    def _one_subject(self) -> AnomaliesQuery:
        if self.protocol is not None and self.token is not None:
            raise ValueError("give protocol or token, not both")
        return self


class AnomalyRecord(BaseModel):
    """One AnomalyDetected fact (docs/anomalies.md)."""

    model_config = ANSWER
    position: int = Field(description="the event store's position of the detection")
    id: str = Field(description="protocol slug or token id")
    kind: Literal["protocol", "token"]
    series: str = Field(examples=["protocol:aave:tvl:total"])
    measure: str
    timestamp: float = Field(description="when the anomalous value was observed, unix seconds")
    value: float
    score: float = Field(description="how unusual, in (robust) standard deviations")
    direction: Literal["fall", "rise"]
    reason: str


class AnomalyList(BaseModel):
    """Recorded anomalies, the most recent first."""

    model_config = ANSWER
    anomalies: list[AnomalyRecord]
