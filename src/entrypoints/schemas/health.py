"""``GET /health``: the node's log positions and its projections' progress."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .common import ANSWER

__all__ = ["Health", "ProjectionHealth", "ProjectionStall"]


class ProjectionStall(BaseModel):
    """Why a projection is not moving: it failed to apply what follows ``position``."""

    model_config = ANSWER
    position: int
    error: str
    since: float = Field(description="unix time of the first failure of this streak")
    failures: int


class ProjectionHealth(BaseModel):
    """One projection this node runs."""

    model_config = ANSWER
    position: int = Field(description="the last log position it applied")
    lag: int = Field(ge=0, description="log positions it is behind the head")
    stalled: ProjectionStall | None


class Health(BaseModel):
    """``ok`` (200), or ``degraded`` (503) while a projection cannot apply the log."""

    model_config = ANSWER
    status: Literal["ok", "degraded"]
    log_head: int = Field(description="the event store's global position")
    node_position: int | None = Field(description="where this node's follower is (if any)")
    hot_position: int
    history_position: int
    connections: int = Field(description="open WebSocket connections")
    projections: dict[str, ProjectionHealth]
