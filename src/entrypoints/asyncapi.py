"""The AsyncAPI 2.6 document of the WebSocket protocol (``GET /asyncapi.json``).

Kept in sync with the hub by a test: every message type the hub accepts or emits, every
error code and every close code in ``application/realtime.py`` appears here.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..application.realtime import (
    CHANNELS,
    CLOSE_CODES,
    ERROR_CODES,
    MAX_FRAME_BYTES,
)

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_REQUEST_ID = {
    "oneOf": [{"type": "string", "maxLength": 128}, {"type": "integer"}],
    "description": "optional; echoed in the reply (subscribed, unsubscribed, pong, error)",
}
_POSITION = {"type": "integer", "minimum": 0, "description": "the event store's global position"}


def _message(type_: str, summary: str, properties: dict[str, Any], required: list[str]) -> Any:
    return {
        "name": type_,
        "title": type_,
        "summary": summary,
        "contentType": "application/json",
        "payload": {
            "type": "object",
            "required": ["type", *required],
            "properties": {"type": {"type": "string", "const": type_}, **properties},
        },
    }


def _filters() -> dict[str, Any]:
    strings = {"type": "array", "items": {"type": "string"}, "maxItems": 1000}
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "all given conditions must hold",
        "properties": {
            "protocolIds": {**strings, "description": "protocol slugs"},
            "tokenIds": {**strings, "description": "token ids (prices channel)"},
            "chains": {
                **strings,
                "description": "an update for one of these chains, or a total update of a "
                "protocol listed on one of them (case-insensitive)",
            },
            "categories": {**strings, "description": "case-insensitive"},
            "minTvl": {"type": "number", "minimum": 0},
        },
    }


def client_messages() -> dict[str, Any]:
    return {
        "subscribe": _message(
            "subscribe",
            "Subscribe to a channel; with since, first replay every matching update after it",
            {
                "channel": {"type": "string", "enum": list(CHANNELS)},
                "params": _filters(),
                "since": {
                    **_POSITION,
                    "description": "replay every matching update after this position, then "
                    "continue live (no gap, no duplicate); refused beyond the log head",
                },
                "coalesce": {
                    "type": "boolean",
                    "default": False,
                    "description": "opt in to coalescing: when this connection lags (queue "
                    "past half its bound), a newer update of the same value (id, metric, "
                    "chain) replaces the queued one instead of growing the queue",
                },
                "id": _REQUEST_ID,
            },
            ["channel"],
        ),
        "unsubscribe": _message(
            "unsubscribe",
            "Stop one subscription (a replay under way stops too)",
            {"subscriptionId": {"type": "string"}, "id": _REQUEST_ID},
            ["subscriptionId"],
        ),
        "ping": _message("ping", "Liveness; answered with pong", {"id": _REQUEST_ID}, []),
    }


def server_messages() -> dict[str, Any]:
    update_data = {
        "type": "object",
        "required": ["id", "value", "timestamp", "change24h"],
        "properties": {
            "id": {"type": "string", "description": "protocol slug or token id"},
            "value": {"type": "number"},
            "timestamp": {"type": "number", "description": "observed_at, unix seconds"},
            "change24h": {
                **_NUMBER_OR_NULL,
                "description": "percent change over 24 h of a total; null for chain values "
                "and for replayed updates",
            },
            "metric": {"type": "string", "enum": ["tvl", "volume_24h", "fees_24h"]},
            "chain": {"type": "string"},
            "confidence": _NUMBER_OR_NULL,
        },
    }
    return {
        "subscribed": _message(
            "subscribed",
            "A subscription is live (or replaying)",
            {
                "subscriptionId": {"type": "string"},
                "channel": {"type": "string", "enum": list(CHANNELS)},
                "position": {**_POSITION, "description": "the hub's position now"},
                "recovered": {
                    "type": "boolean",
                    "description": "false if since was further back than the replay limit: "
                    "only the most recent part is replayed",
                },
                "id": _REQUEST_ID,
            },
            ["subscriptionId", "channel", "position", "recovered"],
        ),
        "unsubscribed": _message(
            "unsubscribed",
            "Answer to unsubscribe",
            {"subscriptionId": {"type": "string"}, "id": _REQUEST_ID},
            ["subscriptionId"],
        ),
        "update": _message(
            "update",
            "A new value: protocols (tvl), volumes (volume_24h, fees_24h) or prices",
            {
                "subscriptionId": {"type": "string"},
                "channel": {"type": "string", "enum": ["protocols", "prices", "volumes"]},
                "position": _POSITION,
                "data": update_data,
            },
            ["subscriptionId", "channel", "position", "data"],
        ),
        "alert": _message(
            "alert",
            "One of the key owner's alert rules fired or resolved",
            {
                "subscriptionId": {"type": "string"},
                "alertId": {"type": "string"},
                "condition": {"type": "string", "enum": ["firing", "resolved"]},
                "data": {
                    "type": "object",
                    "properties": {
                        "measure": _NUMBER_OR_NULL,
                        "idempotencyKey": {"type": ["string", "null"]},
                    },
                },
                "timestamp": {"type": "number"},
                "position": _POSITION,
            },
            ["subscriptionId", "alertId", "condition", "data", "timestamp", "position"],
        ),
        "error": _message(
            "error",
            "A malformed or refused frame; the socket and its other subscriptions stay up",
            {
                "code": {
                    "type": "string",
                    "enum": list(ERROR_CODES),
                    "x-descriptions": dict(ERROR_CODES),
                },
                "message": {"type": "string"},
                "id": _REQUEST_ID,
            },
            ["code", "message"],
        ),
        "pong": _message(
            "pong", "Answer to ping", {"position": _POSITION, "id": _REQUEST_ID}, ["position"]
        ),
    }


def asyncapi_document() -> dict[str, Any]:
    clients, servers = client_messages(), server_messages()
    close_codes = "\n".join(f"- {code}: {reason}" for code, reason in CLOSE_CODES.items())
    return {
        "asyncapi": "2.6.0",
        "id": "urn:defi-realtime:websocket",
        "info": {
            "title": "defi-realtime WebSocket API",
            "version": __version__,
            "description": (
                "Live TVL, volumes, prices and alerts over one WebSocket, with gap-free "
                "resume from the event store's position. JSON text frames; with "
                "`?batch=1` every server frame is a JSON array of messages. Client frames "
                f"are limited to {MAX_FRAME_BYTES} bytes. Close codes:\n{close_codes}"
            ),
        },
        "servers": {
            "local": {
                "url": "127.0.0.1:8000",
                "protocol": "ws",
                "description": "defi-realtime serve",
            }
        },
        "defaultContentType": "application/json",
        "channels": {
            "/v2/realtime": {
                "description": "The realtime socket: subscribe to channels, get updates.",
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "headers": {
                            "type": "object",
                            "properties": {
                                "X-API-Key": {"type": "string"},
                                "Origin": {
                                    "type": "string",
                                    "description": "checked against WS_ALLOWED_ORIGINS",
                                },
                            },
                        },
                        "query": {
                            "type": "object",
                            "properties": {
                                "api_key": {
                                    "type": "string",
                                    "description": "instead of the X-API-Key header",
                                },
                                "batch": {
                                    "type": "string",
                                    "enum": ["1", "true"],
                                    "description": "frames are JSON arrays of messages",
                                },
                            },
                        },
                        "bindingVersion": "0.1.0",
                    }
                },
                "publish": {
                    "operationId": "clientSends",
                    "summary": "What a client sends",
                    "message": {
                        "oneOf": [{"$ref": f"#/components/messages/{name}"} for name in clients]
                    },
                },
                "subscribe": {
                    "operationId": "serverSends",
                    "summary": "What the server sends",
                    "message": {
                        "oneOf": [{"$ref": f"#/components/messages/{name}"} for name in servers]
                    },
                },
            }
        },
        "components": {"messages": {**clients, **servers}},
        "x-close-codes": [{"code": code, "reason": reason} for code, reason in CLOSE_CODES.items()],
        "x-error-codes": [
            {"code": code, "description": description} for code, description in ERROR_CODES.items()
        ],
    }
