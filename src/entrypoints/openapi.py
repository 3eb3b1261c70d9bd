"""The OpenAPI document of the REST API (kept in sync with the routes by a test)."""

from __future__ import annotations

from typing import Any

from .. import __version__

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


_SLUG = {"name": "slug", "in": "path", "required": True, "schema": {"type": "string"}}
_NUMBER_OR_NULL = {"type": ["number", "null"]}


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
            {
                "type": "object",
                "required": ["protocol"],
                "properties": {
                    "protocol": {"type": "string", "description": "a listed protocol's slug"},
                    "metric": {"enum": ["tvl", "volume_24h", "fees_24h"], "default": "tvl"},
                    "chain": {"type": "string", "default": "total"},
                },
            },
            {
                "type": "object",
                "required": ["token"],
                "properties": {"token": {"type": "string", "example": "coingecko:ethereum"}},
            },
        ]
    }
    condition = {
        "oneOf": [
            {
                "type": "object",
                "required": ["kind", "direction", "value"],
                "properties": {
                    "kind": {"const": "threshold"},
                    "direction": {"enum": ["above", "below"]},
                    "value": {"type": "number", "minimum": 0},
                },
            },
            {
                "type": "object",
                "required": ["kind", "direction", "value", "window"],
                "properties": {
                    "kind": {"const": "pct_change"},
                    "direction": {"enum": ["above", "below"]},
                    "value": {
                        "type": "number",
                        "minimum": -100,
                        "description": "percent, e.g. -10: falls 10% within the window",
                    },
                    "window": {"enum": ["1h", "24h", "7d"]},
                },
            },
        ]
    }
    channel = {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"enum": ["webhook", "email", "websocket"]},
            "url": {"type": "string", "description": "webhook: http(s) URL"},
            "secret": {"type": "string", "description": "webhook: HMAC key (write-only)"},
            "address": {"type": "string", "description": "email: address"},
        },
    }
    cooldown = {"type": "integer", "minimum": 0, "maximum": 2_592_000, "default": 3_600}
    return {
        "AlertRuleInput": {
            "type": "object",
            "required": ["target", "condition", "channels"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "maxLength": 200},
                "target": target,
                "condition": condition,
                "channels": {"type": "array", "minItems": 1, "items": channel},
                "cooldown": cooldown,
            },
        },
        "AlertRule": {
            "type": "object",
            "properties": {
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
            },
        },
        "Backtest": {
            "type": "object",
            "properties": {
                "alertId": {"type": "string"},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "state": {"enum": ["firing", "resolved"]},
                            "observed_at": number,
                            "measure": number,
                        },
                    },
                },
                "points": {"type": "integer", "description": "observations evaluated"},
                "start": {"type": ["number", "null"]},
                "end": {"type": ["number", "null"]},
            },
        },
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
                        {
                            "type": "object",
                            "properties": {
                                "alerts": {"type": "array", "items": _RULE_REF},
                                "total": {"type": "integer"},
                            },
                        }
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
                        {
                            "type": "object",
                            "properties": {"id": {"type": "string"}, "state": {"const": "deleted"}},
                        }
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
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "start": {"type": ["number", "string"]},
                                    "end": {"type": ["number", "string"]},
                                },
                            }
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
    protocol = {
        "type": "object",
        "properties": {
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
        },
    }
    observation = {
        "type": "object",
        "required": ["protocol", "value", "observed_at"],
        "additionalProperties": False,
        "properties": {
            "protocol": {"type": "string"},
            "metric": {"enum": ["tvl", "volume_24h", "fees_24h"], "default": "tvl"},
            "chain": {"type": "string", "default": "total"},
            "value": {"type": "number", "minimum": 0},
            "observed_at": {
                "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]
            },
            "source": {"type": "string"},
            "name": {"type": "string"},
            "category": {"type": "string"},
            "chains": {"type": "array", "items": {"type": "string"}},
            "url": {"type": "string"},
        },
    }
    price = {
        "type": "object",
        "required": ["token", "price", "observed_at"],
        "additionalProperties": False,
        "properties": {
            "token": {"type": "string", "example": "coingecko:ethereum"},
            "price": {"type": "number", "minimum": 0},
            "observed_at": {
                "oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]
            },
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "source": {"type": "string"},
        },
    }
    ingest_result = {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "kind": {"type": "string"},
                        "index": {"type": "integer"},
                        "reason": {"type": "string"},
                    },
                },
            },
            "committed": {"type": "boolean"},
            "position": {"type": "integer"},
        },
    }
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
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {},
                            },
                        }
                    },
                },
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
            "/health": {
                "get": {
                    "summary": "Liveness and log positions",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/v2/protocols": {
                "get": {
                    "summary": "List protocols (filter, sort, paginate)",
                    "parameters": [
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
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "protocols": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Protocol"},
                                    },
                                    "total": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors(400),
                    },
                }
            },
            "/v2/protocols/{slug}": {
                "get": {
                    "summary": "One protocol's current values",
                    "parameters": [_SLUG],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Protocol"}),
                        **_errors(404),
                    },
                }
            },
            "/v2/protocols/{slug}/metrics": {
                "get": {
                    "summary": "Time series of a metric, bucketed, as of a time",
                    "parameters": [
                        _SLUG,
                        _query("metric", {"enum": ["tvl", "volume_24h", "fees_24h"]}, "metric"),
                        _query("chain", {"type": "string"}, "'total' or a chain"),
                        _query("start", {"type": "string"}, "unix seconds or ISO-8601"),
                        _query("end", {"type": "string"}, "unix seconds or ISO-8601"),
                        _query("bucket", {"type": "string"}, "5m|15m|1h|4h|1d|1w or seconds"),
                        _query("as_of", {"type": "string"}, "only observations at or before"),
                        _query("limit", {"type": "integer"}, "most recent N points"),
                    ],
                    "responses": {"200": _json({"type": "object"}), **_errors(400, 404)},
                }
            },
            "/v2/realtime/tvl": {
                "get": {
                    "summary": "Latest TVL of given (protocolIds=a,b) or the largest protocols",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/v2/realtime/prices": {
                "get": {
                    "summary": "Latest prices of given (tokens=a,b) or recently updated tokens",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/v2/realtime/volumes": {
                "get": {
                    "summary": "Latest 24h volumes and fees",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/v2/ingest": {
                "post": {
                    "summary": "Record a batch of observations and prices",
                    "security": [{"ApiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
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
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/IngestResult"}),
                        **_errors(400, 401, 413, 422),
                    },
                }
            },
            "/v2/alerts/{rule_id}/history": {
                "get": {
                    "summary": "An alert rule's transitions and every delivery attempt "
                    "(owner only)",
                    "security": [{"ApiKey": []}],
                    "parameters": [
                        {
                            "name": "rule_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "format": "uuid"},
                        },
                        _query("limit", {"type": "integer", "maximum": 10_000}, "rows of each"),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "alertId": {"type": "string"},
                                    "name": {"type": "string"},
                                    "state": {"type": "string"},
                                    "firing": {"enum": ["firing", "resolved"]},
                                    "transitions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "kind": {"enum": ["fired", "resolved"]},
                                                "measure": {"type": "number"},
                                                "observedAt": {"type": "number"},
                                                "position": {"type": "integer"},
                                                "idempotencyKey": {"type": ["string", "null"]},
                                                "recordedAt": {"type": "number"},
                                            },
                                        },
                                    },
                                    "deliveries": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                "idempotencyKey": {"type": "string"},
                                                "channel": {"type": "object"},
                                                "attempt": {"type": "integer"},
                                                "status": {
                                                    "enum": [
                                                        "delivered",
                                                        "failed",
                                                        "dead_lettered",
                                                    ]
                                                },
                                                "condition": {"enum": ["firing", "resolved"]},
                                                "position": {"type": "integer"},
                                                "httpStatus": {"type": ["integer", "null"]},
                                                "error": {"type": ["string", "null"]},
                                                "startedAt": {"type": "number"},
                                                "finishedAt": {"type": "number"},
                                            },
                                        },
                                    },
                                    "notifications": {
                                        "type": "object",
                                        "description": "per idempotency key: attempts, last status",
                                    },
                                },
                            }
                        ),
                        **_errors(400, 401, 404),
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
            },
            "/asyncapi.json": {
                "get": {
                    "summary": "AsyncAPI 2.6 document of the WebSocket protocol (/v2/realtime)",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }
