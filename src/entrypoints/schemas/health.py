"""``GET /health`` (log positions, projections' progress), ``/health/live``, ``/health/ready``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .common import ANSWER

__all__ = [
    "Health",
    "Liveness",
    "ProjectionHealth",
    "ProjectionStall",
    "Readiness",
    "ReadinessCheck",
]


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


class Liveness(BaseModel):
    """The process answers: its event loop runs (no dependency is checked)."""

    model_config = ANSWER
    status: Literal["alive"]


class ReadinessCheck(BaseModel):
    """One check of ``/health/ready``: a dependency, or a projection's progress."""

    model_config = ANSWER
    status: Literal["pass", "fail"]
    reason: str | None = Field(description="why it failed (null when it passed)")
    detail: str | None = Field(description="what it saw when it passed")
    lag: int | None = Field(
        default=None, ge=0, description="projections: log positions behind the head"
    )
    duration_ms: float = Field(ge=0, description="how long the check took")


class Readiness(BaseModel):
    """``ready`` (200) when every check passes, else ``not_ready`` (503)."""

    model_config = ANSWER
    status: Literal["ready", "not_ready"]
    checks: dict[str, ReadinessCheck] = Field(
        description="by name: event_store, history_db, redis, rabbitmq, projection:NAME"
    )
