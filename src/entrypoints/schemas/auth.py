"""``POST /v2/auth/token``: a session token minted from an API key."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .common import ANSWER

__all__ = ["SessionTokenAnswer"]


class SessionTokenAnswer(BaseModel):
    """A short-lived token for ``Authorization: Bearer`` and ``/v2/realtime?token=``."""

    model_config = ANSWER

    token: Annotated[str, Field(description="a signed JWT (HS256) naming the key by id")]
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: Annotated[int, Field(ge=0, description="seconds from now")]
    expires_at: Annotated[int, Field(description="unix seconds")]
