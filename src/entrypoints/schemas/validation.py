"""Turning a request body into a model, or into the API's 400 with the field named."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ...domain.alert_values import validation_message
from ..errors import ApiError

__all__ = ["parse_body"]

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: Any, *, code: str = "invalid_body") -> M:
    """``body`` validated as ``model``. A body that is not an object, or has a field the
    model does not know, is 400 ``invalid_body``; any other problem is 400 ``code`` with
    ``details.field`` naming the top-level field it is in."""
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - set(model.model_fields))
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        loc = error.errors(include_url=False)[0]["loc"]
        field = str(loc[0]) if loc else None
        raise ApiError(
            400,
            code,
            validation_message(error, "", body),
            None if field is None else {"field": field},
        ) from None
