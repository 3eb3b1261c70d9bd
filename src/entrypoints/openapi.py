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
            },
        },
        "paths": {
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
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }
