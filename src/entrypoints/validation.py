"""Turning a request's query string or body into a model, or into the API's 400.

The models are in ``schemas/`` (pure shapes, no HTTP); this module is where their
validation errors become ``ApiError`` answers that name the parameter or field at fault.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from starlette.requests import Request

from ..domain.alert_values import validation_message
from .errors import ApiError
from .schemas.protocols import ProtocolPath

__all__ = ["parse_body", "parse_query", "path_slug", "query_names"]

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: Any, *, code: str = "invalid_body") -> M:
    """``body`` validated as ``model``. A body that is not an object, or has a field the
    model does not know, is 400 ``invalid_body``; any other problem is 400 ``code`` with
    ``details.field`` naming the top-level field it is in."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - set(model.model_fields) - query_names(model))
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        loc = first["loc"]
        field = str(loc[0]) if loc else None
        raise ApiError(
            400,
            code,
            validation_message(error, "", body),
            None if field is None else {"field": field},
        ) from None


@functools.cache
def query_names(model: type[BaseModel]) -> frozenset[str]:
    """The query parameters ``model`` reads: its fields' aliases (or names)."""
    return frozenset(field.alias or name for name, field in model.model_fields.items())


def parse_query(model: type[M], params: Mapping[str, str]) -> M:
    """The query string validated as ``model`` (values coerced from strings; a parameter
    given twice counts once, its last value). A parameter the model does not read, or a
    value it refuses, is 400 ``invalid_parameter`` naming the parameter(s)."""
    unknown = sorted(set(params) - query_names(model))
    if unknown:
        raise ApiError(
            400,
            "invalid_parameter",
            f"unknown query parameter(s): {', '.join(unknown)}",
            {"parameters": unknown},
        )
    try:
        return model.model_validate(dict(params))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        name = str(first["loc"][0]) if first["loc"] else ""
        raise ApiError(
            400, "invalid_parameter", _query_message(model, name, first), {"parameter": name}
        ) from None


_SAME_MEANING: Mapping[str, str] = {
    "int_parsing": "{name} must be an integer",
    "int_type": "{name} must be an integer",
    "int_from_float": "{name} must be an integer",
    "float_parsing": "{name} must be a number",
    "float_type": "{name} must be a number",
    "finite_number": "{name} must be finite",
    "bool_parsing": "{name} must be true or false",
    "literal_error": "{name} must be {expected}",
    "too_long": "{name} holds at most {max_length} values",
}
_BOUNDS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _query_message(model: type[BaseModel], name: str, error: ErrorDetails) -> str:
    kind = error["type"]
    context = dict(error.get("ctx") or {})
    if kind in _BOUNDS:
        low, high = _documented_bounds(model, name)
        if low is not None and high is not None:
            return f"{name} must be between {low} and {high}"
    if kind == "value_error":
        reason = str(context.get("error") or error["msg"]).removeprefix("Value error, ")
        return f"{name} {reason}" if len(error["loc"]) == 1 else f"{name}: {reason}"
    template = _SAME_MEANING.get(kind)
    if template is not None:
        try:
            return template.format(name=name, **context)
        except (KeyError, IndexError):
            pass
    return f"{name}: {error['msg']}"


@functools.cache
def _documented_bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    """The ``minimum`` and ``maximum`` the JSON schema documents for parameter ``name``:
    the message states the bounds the OpenAPI document shows."""
    schema = model.model_json_schema()["properties"].get(name, {})
    low = high = None
    for part in _walk(schema):
        low = part.get("minimum", low)
        high = part.get("maximum", high)
    return low, high


def _walk(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield schema
    for branch in schema.get("anyOf", ()):
        yield from _walk(branch)


def path_slug(request: Request) -> str | None:
    """The path's ``{slug}`` if it keeps the slug rule, else None (such a protocol cannot
    have been listed: callers answer 404)."""
    try:
        return ProtocolPath.model_validate({"slug": request.path_params["slug"]}).slug
    except ValidationError:
        return None


def has_body(request: Request) -> bool:
    """Whether the request carries a body (an optional one may be left out)."""
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers
