"""Shapes every area shares: the error answer, query-string value types, id rules.

Query parameters arrive as strings; the types here coerce them (``"10"`` to 10, ``"a,b"``
to ``["a", "b"]``) and say in their JSON schema what the API accepts, so the OpenAPI
parameters are generated from the same definitions that validate them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
)

from ...application.ingest import InvalidItem, parse_timestamp
from ...application.views import MAX_PAGE
from ...domain.errors import DomainError
from ...domain.protocol import SLUG_PATTERN, check_slug
from ...domain.token import TOKEN_ID_PATTERN, check_token_id

__all__ = [
    "ANSWER",
    "QUERY",
    "CheckedSlug",
    "CheckedTokenId",
    "Error",
    "ErrorInfo",
    "JsonDocument",
    "NoParameters",
    "ProtocolIds",
    "QueryText",
    "QueryTime",
    "SlugText",
    "TokenIdText",
    "TokenIds",
    "control_character_at",
    "date_time",
]

QUERY: Final = ConfigDict(extra="forbid", frozen=True)
"""Query models: strings coerced to the field types; an unknown parameter is refused."""

ANSWER: Final = ConfigDict(frozen=True, from_attributes=True)
"""Response models: built from the read models' views (``from_attributes``)."""


class ErrorInfo(BaseModel):
    """What went wrong: a stable ``code`` for programs, a ``message`` for people."""

    model_config = ANSWER
    code: str = Field(examples=["invalid_parameter"])
    message: str
    details: Any = Field(
        description="more about the error, e.g. the field or parameter at fault; null if none"
    )


class Error(BaseModel):
    """Every 4xx (and 5xx) answer: ``{"error": {"code", "message", "details"}}``."""

    model_config = ANSWER
    error: ErrorInfo


class NoParameters(BaseModel):
    """The query of an operation that takes no query parameter (any one is refused)."""

    model_config = QUERY


class JsonDocument(RootModel[dict[str, Any]]):
    """A JSON object (the OpenAPI and AsyncAPI documents)."""


# -- ids: the domain's rules, stated in the schema ------------------------------------------

SlugText = Annotated[str, Field(json_schema_extra={"pattern": SLUG_PATTERN})]
"""A protocol slug in an answer: the pattern documents the rule without re-checking stored
data (a value accepted under older rules must still be served)."""

TokenIdText = Annotated[
    str, Field(json_schema_extra={"pattern": TOKEN_ID_PATTERN}, examples=["coingecko:ethereum"])
]
"""A token id in an answer (documented, not re-checked; see ``SlugText``)."""


def _checked(check: Callable[[str], str]) -> Callable[[str], str]:
    """A domain check as a validator: its ``DomainError`` becomes a field error."""

    def validate(value: str) -> str:
        try:
            return check(value)
        except DomainError as error:
            raise ValueError(str(error)) from None

    return validate


def _comma_separated(raw: Any) -> Any:
    """``"a, b,,c"`` as ``["a", "b", "c"]``: blanks around and between commas dropped; an
    empty value is no value (``None``)."""
    if raw == "":
        return None
    if isinstance(raw, str):
        return [value.strip() for value in raw.split(",") if value.strip()]
    return raw


CheckedSlug = Annotated[
    str, Field(json_schema_extra={"pattern": SLUG_PATTERN}), AfterValidator(_checked(check_slug))
]
"""A protocol slug a request names: the domain's rule, checked and documented."""
CheckedTokenId = Annotated[
    str,
    Field(json_schema_extra={"pattern": TOKEN_ID_PATTERN}),
    AfterValidator(_checked(check_token_id)),
]
"""A token id a request names: the domain's rule, checked and documented."""
ProtocolIds = Annotated[
    Annotated[list[CheckedSlug], Field(max_length=MAX_PAGE)] | None,
    BeforeValidator(_comma_separated),
    Field(description=f"protocol slugs, comma-separated (at most {MAX_PAGE})"),
]
"""A comma-separated list of protocol slugs (``protocolIds=aave-v3,lido``)."""
TokenIds = Annotated[
    Annotated[list[CheckedTokenId], Field(max_length=MAX_PAGE)] | None,
    BeforeValidator(_comma_separated),
    Field(
        description=f"token ids such as coingecko:ethereum, comma-separated (at most {MAX_PAGE})"
    ),
]
"""A comma-separated list of token ids (``tokens=coingecko:ethereum,coingecko:bitcoin``)."""


# -- text -------------------------------------------------------------------------------------


def _no_control_characters(value: str) -> str:
    # No stored name or chain holds one (C0, DEL, C1), and PostgreSQL text cannot hold NUL:
    # a query naming one is bad input, not a database error.
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in value):
        raise ValueError("must not contain control characters")
    return value


def control_character_at(value: Any, path: str = "") -> str | None:
    """Where the first string in ``value`` (a JSON value) with a control character is, as
    ``name``, ``target.chain`` or ``channels[0].url``; None if there is none."""
    if isinstance(value, str):
        try:
            _no_control_characters(value)
        except ValueError:
            return path
        return None
    if isinstance(value, dict):
        items: Any = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for where, item in items:
        found = control_character_at(item, where)
        if found is not None:
            return found
    return None


QueryText = Annotated[
    str,
    AfterValidator(_no_control_characters),
    Field(json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"}),
]
"""A free text a query compares with stored values (a chain, a category)."""


# -- times ------------------------------------------------------------------------------------


def date_time(text: str) -> float:
    """An ISO-8601 / RFC 3339 date-time as unix seconds (naive means UTC); ``ValueError``
    if it is not one."""
    try:
        # RFC 3339 (the schemas' date-time) also allows a lower-case "t" and "z".
        return parse_timestamp(text.upper())
    except (InvalidItem, DomainError):
        raise ValueError("must be unix seconds or ISO-8601") from None


def _query_time(raw: Any) -> Any:
    """Unix seconds (any finite number) or ISO-8601 (naive means UTC); blank means none."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        return raw
    try:
        number = float(raw)
    except ValueError:
        return date_time(raw)
    # A time is echoed in answers and compared in SQL: NaN and infinities are not times.
    if not math.isfinite(number):
        raise ValueError("must be unix seconds or ISO-8601")
    return number


QueryTime = Annotated[
    float | None,
    BeforeValidator(_query_time),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
            "description": "unix seconds or ISO-8601 (naive means UTC)",
        },
        mode="validation",
    ),
]
