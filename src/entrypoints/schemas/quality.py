"""``GET /v2/data-quality``: what looks wrong in the current data."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from ...application.data_quality import Kind
from ...application.views import MAX_PAGE
from .common import ANSWER, QUERY

__all__ = ["DataQuality", "DataQualityQuery", "QualityFinding"]


class DataQualityQuery(BaseModel):
    model_config = QUERY
    kind: Kind | None = Field(default=None, description="only findings of this kind")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="findings at most")] = 100


class QualityFinding(BaseModel):
    model_config = ANSWER
    protocol: str
    kind: Kind
    message: str
    details: dict[str, Any]


class DataQuality(BaseModel):
    """Flagged, never dropped: every value stays in the data and in every answer."""

    model_config = ANSWER
    position: int = Field(description="the hot projection's log position")
    counts: dict[str, int] = Field(description="findings of each kind, before the limit")
    findings: list[QualityFinding]
