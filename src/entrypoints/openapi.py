"""The OpenAPI document of the REST API (kept in sync with the routes by a test)."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..application.views import MAX_PAGE

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _json(_ERROR, "Error") for status in statuses}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _object(
    properties: dict[str, Any], *, required: list[str] | None = None, closed: bool = False
) -> dict[str, Any]:
    """An object schema; ``closed`` refuses properties it does not list (request bodies)."""
    schema: dict[str, Any] = {"type": "object"}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    schema["properties"] = properties
    return schema


def _get(
    summary: str,
    schema: dict[str, Any] | None = None,
    *,
    parameters: list[dict[str, Any]] | None = None,
    errors: tuple[int, ...] = (),
    secured: bool = False,
) -> dict[str, Any]:
    """A path served by GET alone, answering ``schema`` as JSON (any object by default) or
    one of the ``errors``."""
    operation: dict[str, Any] = {"summary": summary}
    if secured:
        operation["security"] = [{"ApiKey": []}]
    if parameters:
        operation["parameters"] = parameters
    operation["responses"] = {"200": _json(schema or {"type": "object"}), **_errors(*errors)}
    return {"get": operation}


_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_TIMESTAMP = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}


def _ids(name: str, description: str) -> dict[str, Any]:
    """A comma-separated list of ids (``name=a,b``): blanks around and between commas are
    dropped; more than ``MAX_PAGE`` is a 400."""
    schema = {"type": "array", "items": {"type": "string"}, "maxItems": MAX_PAGE}
    return {**_query(name, schema, description), "style": "form", "explode": False}


_REALTIME_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
    "how many entries to report when no ids are named; next to ids it changes nothing but "
    "is still checked (out of range or not an integer: 400)",
)
_PROTOCOL_IDS = (
    f"comma-separated protocol slugs (at most {MAX_PAGE}), reported in the order given; "
)


def _realtime(summary: str, *parameters: dict[str, Any]) -> dict[str, Any]:
    """A ``/v2/realtime/...`` snapshot: ``{"data": [...]}``, or 400 for a bad parameter."""
    return _get(summary, parameters=[*parameters, _REALTIME_LIMIT], errors=(400,))


_RULE_ID = {
    "name": "rule_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_RULE_REF = {"$ref": "#/components/schemas/AlertRule"}


def _alert_rule_schemas() -> dict[str, Any]:
    number = {"type": "number"}
    target = {
        "oneOf": [
            _object(
                {
                    "protocol": {"type": "string", "description": "a listed protocol's slug"},
                    "metric": {"enum": ["tvl", "volume_24h", "fees_24h"], "default": "tvl"},
                    "chain": {"type": "string", "default": "total"},
                },
                required=["protocol"],
            ),
            _object(
                {"token": {"type": "string", "example": "coingecko:ethereum"}},
                required=["token"],
            ),
        ]
    }
    condition = {
        "oneOf": [
            _object(
                {
                    "kind": {"const": "threshold"},
                    "direction": {"enum": ["above", "below"]},
                    "value": {"type": "number", "minimum": 0},
                },
                required=["kind", "direction", "value"],
            ),
            _object(
                {
                    "kind": {"const": "pct_change"},
                    "direction": {"enum": ["above", "below"]},
                    "value": {
                        "type": "number",
                        "minimum": -100,
                        "description": "percent, e.g. -10: falls 10% within the window",
                    },
                    "window": {"enum": ["1h", "24h", "7d"]},
                },
                required=["kind", "direction", "value", "window"],
            ),
        ]
    }
    channel = _object(
        {
            "kind": {"enum": ["webhook", "email", "websocket"]},
            "url": {"type": "string", "description": "webhook: http(s) URL"},
            "secret": {"type": "string", "description": "webhook: HMAC key (write-only)"},
            "address": {"type": "string", "description": "email: address"},
        },
        required=["kind"],
    )
    cooldown = {"type": "integer", "minimum": 0, "maximum": 2_592_000, "default": 3_600}
    return {
        "AlertRuleInput": _object(
            {
                "name": {"type": "string", "maxLength": 200},
                "target": target,
                "condition": condition,
                "channels": {"type": "array", "minItems": 1, "items": channel},
                "cooldown": cooldown,
            },
            required=["target", "condition", "channels"],
            closed=True,
        ),
        "AlertRule": _object(
            {
                "id": {"type": "string", "format": "uuid"},
                "name": {"type": "string"},
                "target": target,
                "condition": condition,
                "channels": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "as created, without the secret; secret_set tells "
                        "whether a webhook signs its deliveries",
                    },
                },
                "cooldown": cooldown,
                "state": {"enum": ["active", "paused"]},
                "firing": {"enum": ["firing", "resolved"]},
                "last_fired_at": {"type": ["number", "null"]},
                "created_at": number,
                "updated_at": number,
            }
        ),
        "Backtest": _object(
            {
                "alertId": {"type": "string"},
                "events": {
                    "type": "array",
                    "items": _object(
                        {
                            "state": {"enum": ["firing", "resolved"]},
                            "observed_at": number,
                            "measure": number,
                        }
                    ),
                },
                "points": {"type": "integer", "description": "observations evaluated"},
                "start": {"type": ["number", "null"]},
                "end": {"type": ["number", "null"]},
            }
        ),
    }


def _alert_rule_paths() -> dict[str, Any]:
    """``/v2/alerts`` and its sub-resources (entrypoints/alerts_api.py)."""
    schemas = _alert_rule_schemas()
    secured: list[dict[str, Any]] = [{"ApiKey": []}]
    rule = _json(_RULE_REF)
    body = {
        "required": True,
        "content": {"application/json": {"schema": schemas["AlertRuleInput"]}},
    }
    partial = {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    **schemas["AlertRuleInput"],
                    "required": [],
                    "description": "fields to change (a rule's target cannot change)",
                }
            }
        },
    }

    def lifecycle(summary: str) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "security": secured,
                "parameters": [_RULE_ID],
                "responses": {"200": rule, **_errors(401, 404, 409)},
            }
        }

    return {
        "/v2/alerts": {
            "post": {
                "summary": "Create an alert rule owned by the key's account",
                "security": secured,
                "requestBody": body,
                "responses": {"200": rule, **_errors(400, 401, 403, 422)},
            },
            "get": {
                "summary": "The key's account's alert rules",
                "security": secured,
                "responses": {
                    "200": _json(
                        _object(
                            {
                                "alerts": {"type": "array", "items": _RULE_REF},
                                "total": {"type": "integer"},
                            }
                        )
                    ),
                    **_errors(401),
                },
            },
        },
        "/v2/alerts/{rule_id}": {
            "get": {
                "summary": "One of the account's alert rules",
                "security": secured,
                "parameters": [_RULE_ID],
                "responses": {"200": rule, **_errors(401, 404)},
            },
            "put": {
                "summary": "Change a rule's name, condition, channels or cooldown",
                "security": secured,
                "parameters": [_RULE_ID],
                "requestBody": partial,
                "responses": {"200": rule, **_errors(400, 401, 404, 409)},
            },
            "delete": {
                "summary": "Delete a rule (it stops being evaluated)",
                "security": secured,
                "parameters": [_RULE_ID],
                "responses": {
                    "200": _json(
                        _object({"id": {"type": "string"}, "state": {"const": "deleted"}})
                    ),
                    **_errors(401, 404, 409),
                },
            },
        },
        "/v2/alerts/{rule_id}/pause": lifecycle("Pause a rule: it does not fire until resumed"),
        "/v2/alerts/{rule_id}/resume": lifecycle("Resume a paused rule"),
        "/v2/alerts/{rule_id}/backtest": {
            "post": {
                "summary": "When the rule would have fired and resolved over stored history",
                "security": secured,
                "parameters": [_RULE_ID],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {
                                    "start": {"type": ["number", "string"]},
                                    "end": {"type": ["number", "string"]},
                                },
                                closed=True,
                            )
                        }
                    },
                },
                "responses": {
                    "200": _json(schemas["Backtest"]),
                    **_errors(400, 401, 404, 422),
                },
            }
        },
    }


def openapi_document() -> dict[str, Any]:
    protocol = _object(
        {
            "slug": {"type": "string"},
            "name": {"type": "string"},
            "category": {"type": "string"},
            "chains": {"type": "array", "items": {"type": "string"}},
            "url": {"type": "string"},
            "tvl": _NUMBER_OR_NULL,
            "chainTvls": {"type": "object", "additionalProperties": {"type": "number"}},
            "change_1h": _NUMBER_OR_NULL,
            "change_1d": _NUMBER_OR_NULL,
            "change_7d": _NUMBER_OR_NULL,
            "volume_24h": _NUMBER_OR_NULL,
            "fees_24h": _NUMBER_OR_NULL,
            "updated_at": _NUMBER_OR_NULL,
            "position": {"type": "integer"},
        }
    )
    observation = _object(
        {
            "protocol": {"type": "string"},
            "metric": {"enum": ["tvl", "volume_24h", "fees_24h"], "default": "tvl"},
            "chain": {"type": "string", "default": "total"},
            "value": {"type": "number", "minimum": 0},
            "observed_at": _TIMESTAMP,
            "source": {"type": "string"},
            "name": {"type": "string"},
            "category": {"type": "string"},
            "chains": {"type": "array", "items": {"type": "string"}},
            "url": {"type": "string"},
        },
        required=["protocol", "value", "observed_at"],
        closed=True,
    )
    price = _object(
        {
            "token": {"type": "string", "example": "coingecko:ethereum"},
            "price": {"type": "number", "minimum": 0},
            "observed_at": _TIMESTAMP,
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "source": {"type": "string"},
        },
        required=["token", "price", "observed_at"],
        closed=True,
    )
    ingest_result = _object(
        {
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": _object(
                    {
                        "kind": {"type": "string"},
                        "index": {"type": "integer"},
                        "reason": {"type": "string"},
                    }
                ),
            },
            "committed": {"type": "boolean"},
            "position": {"type": "integer"},
        }
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "defi-realtime",
            "version": __version__,
            "description": "Real-time DeFi analytics: live TVL and prices, history, ingest. "
            "WebSocket protocol at /v2/realtime (see docs/websocket.md).",
        },
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {
                "Error": _object(
                    {
                        "error": _object(
                            {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {},
                            },
                            required=["code", "message"],
                        )
                    }
                ),
                "Protocol": protocol,
                "Observation": observation,
                "Price": price,
                "IngestResult": ingest_result,
                **{
                    name: schema
                    for name, schema in _alert_rule_schemas().items()
                    if name in ("AlertRule", "AlertRuleInput")
                },
            },
        },
        "paths": {
            **_alert_rule_paths(),
            "/health": _get("Liveness and log positions"),
            "/v2/protocols": _get(
                "List protocols (filter, sort, paginate)",
                _object(
                    {
                        "protocols": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Protocol"},
                        },
                        "total": {"type": "integer"},
                        "limit": {"type": "integer"},
                        "offset": {"type": "integer"},
                    }
                ),
                parameters=[
                    _query("chain", {"type": "string"}, "only protocols on this chain"),
                    _query("category", {"type": "string"}, "exact category"),
                    _query("min_tvl", {"type": "number"}, "tvl at least this"),
                    _query(
                        "sort",
                        {
                            "enum": [
                                "tvl",
                                "change_1h",
                                "change_1d",
                                "change_7d",
                                "name",
                                "volume_24h",
                                "fees_24h",
                            ]
                        },
                        "sort key",
                    ),
                    _query("order", {"enum": ["asc", "desc"]}, "sort order"),
                    _query("limit", {"type": "integer", "maximum": 1000}, "page size"),
                    _query("offset", {"type": "integer"}, "page start"),
                ],
                errors=(400,),
            ),
            "/v2/protocols/{slug}": _get(
                "One protocol's current values",
                {"$ref": "#/components/schemas/Protocol"},
                parameters=[_SLUG],
                errors=(404,),
            ),
            "/v2/protocols/{slug}/metrics": _get(
                "Time series of a metric, bucketed, as of a time",
                parameters=[
                    _SLUG,
                    _query("metric", {"enum": ["tvl", "volume_24h", "fees_24h"]}, "metric"),
                    _query("chain", {"type": "string"}, "'total' or a chain"),
                    _query("start", {"type": "string"}, "unix seconds or ISO-8601"),
                    _query("end", {"type": "string"}, "unix seconds or ISO-8601"),
                    _query("bucket", {"type": "string"}, "5m|15m|1h|4h|1d|1w or seconds"),
                    _query("as_of", {"type": "string"}, "only observations at or before"),
                    _query("limit", {"type": "integer"}, "most recent N points"),
                ],
                errors=(400, 404),
            ),
            "/v2/realtime/tvl": _realtime(
                "Latest TVL of given (protocolIds=a,b) or the largest protocols",
                _ids(
                    "protocolIds",
                    _PROTOCOL_IDS + "unknown ones left out. Absent or empty: the `limit` "
                    "protocols with the largest TVL, those without a TVL last",
                ),
            ),
            "/v2/realtime/prices": _realtime(
                "Latest prices of given (tokens=a,b) or recently updated tokens",
                _ids(
                    "tokens",
                    f"comma-separated token ids such as coingecko:ethereum (at most {MAX_PAGE}), "
                    "reported in the order given; unknown ones left out. Absent or empty "
                    "(and no tokenIds): the `limit` most recently updated tokens, newest first",
                ),
                _ids("tokenIds", "the same as tokens, read when tokens is absent or empty"),
            ),
            "/v2/realtime/volumes": _realtime(
                "Latest 24h volumes and fees of given (protocolIds=a,b) or the largest volumes",
                _ids(
                    "protocolIds",
                    _PROTOCOL_IDS + "reported even without a volume, unknown ones left out. "
                    "Absent or empty: the `limit` protocols with the largest 24h volume, those "
                    "without one left out",
                ),
            ),
            "/v2/ingest": {
                "post": {
                    "summary": "Record a batch of observations and prices",
                    "security": [{"ApiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": _object(
                                    {
                                        "observations": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Observation"},
                                        },
                                        "prices": {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Price"},
                                        },
                                        "listings": {"type": "array", "items": {"type": "object"}},
                                        "partial": {"type": "boolean", "default": False},
                                    },
                                    closed=True,
                                )
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/IngestResult"}),
                        **_errors(400, 401, 413, 422),
                    },
                }
            },
            "/v2/alerts/{rule_id}/history": _get(
                "An alert rule's transitions and every delivery attempt (owner only)",
                _object(
                    {
                        "alertId": {"type": "string"},
                        "name": {"type": "string"},
                        "state": {"type": "string"},
                        "firing": {"enum": ["firing", "resolved"]},
                        "transitions": {
                            "type": "array",
                            "items": _object(
                                {
                                    "kind": {"enum": ["fired", "resolved"]},
                                    "measure": {"type": "number"},
                                    "observedAt": {"type": "number"},
                                    "position": {"type": "integer"},
                                    "idempotencyKey": {"type": ["string", "null"]},
                                    "recordedAt": {"type": "number"},
                                }
                            ),
                        },
                        "deliveries": {
                            "type": "array",
                            "items": _object(
                                {
                                    "idempotencyKey": {"type": "string"},
                                    "channel": {"type": "object"},
                                    "attempt": {"type": "integer"},
                                    "status": {"enum": ["delivered", "failed", "dead_lettered"]},
                                    "condition": {"enum": ["firing", "resolved"]},
                                    "position": {"type": "integer"},
                                    "httpStatus": {"type": ["integer", "null"]},
                                    "error": {"type": ["string", "null"]},
                                    "startedAt": {"type": "number"},
                                    "finishedAt": {"type": "number"},
                                }
                            ),
                        },
                        "notifications": {
                            "type": "object",
                            "description": "per idempotency key: attempts, last status",
                        },
                    }
                ),
                parameters=[
                    _RULE_ID,
                    _query("limit", {"type": "integer", "maximum": 10_000}, "rows of each"),
                ],
                errors=(400, 401, 404),
                secured=True,
            ),
            "/openapi.json": _get("This document"),
            "/asyncapi.json": _get(
                "AsyncAPI 2.6 document of the WebSocket protocol (/v2/realtime)"
            ),
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }
