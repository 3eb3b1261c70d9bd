"""The account and its API keys over REST (``/v2/account``, ``/v2/keys``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

from ...domain.observations import MAX_NAME_LENGTH
from .common import ANSWER, QUERY

__all__ = ["Account", "IssuedKey", "Key", "KeyCreate", "KeyList", "KeyPath", "KeyRotate"]

KeyState = Literal["live", "rotated", "expired", "revoked"]


class KeyPath(BaseModel):
    """``{key_id}``: another account's key, like an unknown or malformed id, is not found
    (404)."""

    model_config = QUERY
    key_id: str = Field(max_length=64)


class KeyCreate(BaseModel):
    """``POST /v2/keys``: a new key on the caller's account, with the caller's tier and
    allow-list."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_NAME_LENGTH,
            json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"},
        ),
    ] = "default"


class KeyRotate(BaseModel):
    """``POST /v2/keys/{key_id}/rotate``: how long the old key keeps working."""

    model_config = ConfigDict(extra="forbid", strict=True)
    grace: StrictInt | StrictFloat | str | None = Field(
        None,
        description="seconds (86400) or a duration (24h, 30m, 2d; 0: none); at most 30 days; "
        "default: the deployment's KEY_ROTATION_GRACE",
    )


class Key(BaseModel):
    """A key as its account sees it: never its secret."""

    model_config = ANSWER
    id: str
    name: str
    tier: str
    state: KeyState = Field(
        description="live; rotated (replaced, working until valid_until); expired; revoked"
    )
    valid_until: float | None = Field(description="unix seconds; null: until revoked")
    allowed_ips: list[str]
    created_at: float


class IssuedKey(Key):
    """A new key, with its secret: shown this once, never again."""

    key: str


class KeyList(BaseModel):
    model_config = ANSWER
    keys: list[Key]
    total: int


class Account(BaseModel):
    """The caller's account."""

    model_config = ANSWER
    id: str
    name: str | None
    tier: str = Field(description="the calling key's tier (tiers are per key)")
    keys: list[Key]
