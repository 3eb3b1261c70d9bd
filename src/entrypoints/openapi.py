"""The OpenAPI 3.1 document of the REST API, generated from the routes' operations.

Every schema comes from a pydantic model (``schemas/``): request bodies and query and path
parameters in validation mode, answers in serialization mode, gathered into
``components.schemas`` by ``models_json_schema``. Nothing here describes a shape by hand.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from .. import __version__
from .operations import Operation, OperationRoute, Text
from .rate_limits import exempt
from .schemas.common import Error

__all__ = ["OpenApi", "openapi_document", "openapi_path"]

REF_TEMPLATE: Final = "#/components/schemas/{model}"
SECURITY_SCHEME: Final = "ApiKey"
BEARER_SCHEME: Final = "Bearer"
_KEY: Final[list[dict[str, list[str]]]] = [{SECURITY_SCHEME: []}, {BEARER_SCHEME: []}]
_KEY_OPTIONAL: Final[list[dict[str, list[str]]]] = [
    {},
    {SECURITY_SCHEME: []},
    {BEARER_SCHEME: []},
]

# Every operation can answer these with the Error shape (see Operation.errors). 414: the
# HTTP edge refuses a URL over 64 KiB before the app sees it (uvicorn's URL parser cannot
# hold more), in the same shape.
_ALWAYS: Final = (400, 401, 414)
_WHY: Final[dict[int, str]] = {
    400: "Bad input: an unknown or invalid query parameter, or a malformed body",
    401: "No API key where one is needed, or a presented key that is not live",
    403: "The key's tier does not allow it",
    404: "Not found (for another account's resources too)",
    409: "The resource's state does not allow it",
    413: "The body or the batch is too large",
    414: "The URL is too long (over 64 KiB)",
    422: "Well-formed, but refused (the details say why)",
    429: "Rate limited: the caller's budget is spent (or its address had too many failed "
    "authentications); error rate_limited, its details the policy, limit, window, remaining, "
    "reset and retryAfter. RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-"
    "headers-10) come with every answer",
}
_LIMIT_HEADERS: Final = (
    ("Retry-After", "integer"),
    ("RateLimit-Policy", "string"),
    ("RateLimit", "string"),
)


def openapi_path(route_path: str) -> str:
    """Starlette's ``{slug:str}`` is OpenAPI's ``{slug}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)


def documented_operations(
    routes: Iterable[BaseRoute],
) -> list[tuple[str, Operation[Any]]]:
    """Every route's operations with their OpenAPI path. A plain HTTP ``Route`` (one not
    built from operations) is an error: every HTTP route is documented."""
    operations: list[tuple[str, Operation[Any]]] = []
    for route in routes:
        if isinstance(route, OperationRoute):
            operations.extend((openapi_path(route.path), op) for op in route.operations)
        elif isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            continue  # files (the dashboard's assets), not operations
        elif isinstance(route, Route):
            raise ValueError(f"route {route.path!r} has no operation: build it as OperationRoute")
        elif not isinstance(route, WebSocketRoute):  # the WebSocket is in the AsyncAPI document
            raise ValueError(f"cannot document route {route!r}")
    ids = [operation.operation_id for _, operation in operations]
    if len(ids) != len(set(ids)):
        raise ValueError(f"operationIds are not unique: {sorted(ids)}")
    return operations


def openapi_document(
    routes: Sequence[BaseRoute], *, require_key_for_reads: bool = False
) -> dict[str, Any]:
    """The document of ``routes`` (reads need a key when ``require_key_for_reads``)."""
    operations = documented_operations(routes)
    inlined = _parameter_models(operation for _, operation in operations)
    refs, schemas = _schemas(operation for _, operation in operations)
    defs: dict[str, Any] = schemas.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for path, operation in operations:
        paths.setdefault(path, {})[operation.method.lower()] = _operation(
            operation,
            refs,
            defs,
            require_key_for_reads=require_key_for_reads,
            rate_limited=not exempt(path),
        )
    # Query and path models become parameters: they are not components of their own.
    components = {
        name: schema
        for name, schema in sorted(defs.items())
        if name not in {_ref_name(refs[(model, "validation")]) for model in inlined}
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "defi-realtime",
            "version": __version__,
            "description": "Real-time DeFi analytics: live TVL and prices, history, ingest, "
            'alerts. Errors are `{"error": {"code", "message", "details"}}`. The '
            "WebSocket protocol at /v2/realtime is described by /asyncapi.json.",
        },
        "components": {
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                # The same key, or a session token (POST /v2/auth/token), as a Bearer.
                BEARER_SCHEME: {"type": "http", "scheme": "bearer"},
            },
            "schemas": components,
        },
        "paths": paths,
    }


class OpenApi:
    """The document of one app, rendered once, when first asked for."""

    def __init__(self, routes: Sequence[BaseRoute], *, require_key_for_reads: bool) -> None:
        documented_operations(routes)  # a route without an operation fails here, at start
        self._routes = tuple(routes)
        self._require_key_for_reads = require_key_for_reads

    @functools.cached_property
    def document(self) -> dict[str, Any]:
        return openapi_document(self._routes, require_key_for_reads=self._require_key_for_reads)

    @functools.cached_property
    def rendered(self) -> bytes:
        return json.dumps(self.document, separators=(",", ":")).encode()


# -- schemas ----------------------------------------------------------------------------------

_Key = tuple[type[BaseModel], JsonSchemaMode]


def _parameter_models(operations: Iterable[Operation[Any]]) -> set[type[BaseModel]]:
    models: set[type[BaseModel]] = set()
    for operation in operations:
        models.add(operation.query)
        if operation.path is not None:
            models.add(operation.path)
    return models


def _schemas(operations: Iterable[Operation[Any]]) -> tuple[dict[_Key, Any], dict[str, Any]]:
    """One JSON schema for every model the operations name: requests in validation mode,
    answers in serialization mode (what a client sends vs what it receives)."""
    keys: dict[_Key, None] = {(Error, "serialization"): None}  # ordered, unique
    for operation in operations:
        keys[(operation.query, "validation")] = None
        if operation.path is not None:
            keys[(operation.path, "validation")] = None
        if operation.body is not None:
            keys[(operation.body, "validation")] = None
        if isinstance(operation.ok, type):
            keys[(operation.ok, "serialization")] = None
        for _, model in operation.also:
            keys[(model, "serialization")] = None
    refs, schemas = models_json_schema(list(keys), ref_template=REF_TEMPLATE)
    return {
        (model, mode): ref
        for (model, mode), ref in refs.items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }, schemas


def _ref_name(ref: Mapping[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _json(schema: Mapping[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    operation: Operation[Any],
    refs: Mapping[_Key, Any],
    defs: Mapping[str, Any],
    *,
    require_key_for_reads: bool,
    rate_limited: bool = True,
) -> dict[str, Any]:
    document: dict[str, Any] = {"operationId": operation.operation_id, "summary": operation.summary}
    if operation.description:
        document["description"] = operation.description
    if operation.access == "key" or (operation.access == "read" and require_key_for_reads):
        document["security"] = _KEY
    elif operation.access == "read":
        document["security"] = _KEY_OPTIONAL  # anyone; a key, when sent, must be live
    parameters = []
    if operation.path is not None:
        parameters += _parameters(defs[_ref_name(refs[(operation.path, "validation")])], "path")
    parameters += _parameters(defs[_ref_name(refs[(operation.query, "validation")])], "query")
    if parameters:
        document["parameters"] = parameters
    if operation.body is not None:
        document["requestBody"] = {
            "required": operation.body_required,
            "content": {"application/json": {"schema": refs[(operation.body, "validation")]}},
        }
    ok: dict[str, Any]
    if isinstance(operation.ok, Text):
        ok = {
            "description": "OK",
            "content": {operation.ok.media_type: {"schema": {"type": "string"}}},
        }
    else:
        ok = _json(refs[(operation.ok, "serialization")], "OK")
    responses: dict[str, Any] = {"200": ok}
    for status, model in operation.also:
        responses[str(status)] = _json(refs[(model, "serialization")], HTTPStatus(status).phrase)
    error = refs[(Error, "serialization")]
    for status in sorted({*_ALWAYS, *operation.errors}):
        responses[str(status)] = _json(error, _WHY.get(status, HTTPStatus(status).phrase))
    if rate_limited:  # ADR 0036; the headers come with every answer of a limited path
        responses["429"] = {
            **_json(error, _WHY[429]),
            "headers": {name: {"schema": {"type": kind}} for name, kind in _LIMIT_HEADERS},
        }
    document["responses"] = responses
    return document


def _parameters(
    model_schema: Mapping[str, Any], location: Literal["path", "query"]
) -> list[dict[str, Any]]:
    """A query or path model's properties as OpenAPI parameters. A list is a
    comma-separated value (``ids=a,b``): ``style: form, explode: false``."""
    required = set(model_schema.get("required", ()))
    parameters = []
    for name, property_schema in model_schema.get("properties", {}).items():
        schema = _parameter_schema(property_schema)
        parameter: dict[str, Any] = {
            "name": name,
            "in": location,
            "required": location == "path" or name in required,
        }
        description = schema.pop("description", None)
        if description:
            parameter["description"] = description
        parameter["schema"] = schema
        if schema.get("type") == "array":
            parameter.update(style="form", explode=False)
        parameters.append(parameter)
    return parameters


def _parameter_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A property's schema as a parameter's: a parameter is absent, never null, so the
    ``null`` branch of an optional value (and its ``null`` default) goes."""
    cleaned = {key: value for key, value in schema.items() if key != "title"}
    branches = cleaned.get("anyOf")
    if branches is not None:
        kept = [branch for branch in branches if branch != {"type": "null"}]
        if len(kept) == 1:
            del cleaned["anyOf"]
            cleaned = {**kept[0], **cleaned}
        else:
            cleaned["anyOf"] = kept
    if "default" in cleaned and cleaned["default"] is None:
        del cleaned["default"]
    return cleaned
