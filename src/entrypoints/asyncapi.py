"""The AsyncAPI 2.6 document of the WebSocket protocol (``GET /asyncapi.json``), generated
from the frame models.

Every payload is a model's JSON schema (``schemas/frames.py``); the shapes they share
(filters, update and alert data) are gathered into ``components.schemas`` by
``models_json_schema``. Close and error codes come from the protocol's vocabulary
(``application/realtime/protocol.py``). Only the handshake's binding is written here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..application.realtime.protocol import CLOSE_CODES, ERROR_CODES, MAX_FRAME_BYTES
from .schemas.frames import CLIENT_MESSAGES, SERVER_MESSAGES

__all__ = ["asyncapi_document"]

REF_TEMPLATE: Final = "#/components/schemas/{model}"
CHANNEL: Final = "/v2/realtime"


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    """The document, built once (the same object on every call: do not modify it)."""
    close_codes = "\n".join(f"- {code}: {reason}" for code, reason in CLOSE_CODES.items())
    messages, schemas = _messages({**CLIENT_MESSAGES, **SERVER_MESSAGES})
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
            CHANNEL: {
                "description": "The realtime socket: subscribe to channels, get updates.",
                "bindings": {"ws": _handshake()},
                "publish": {
                    "operationId": "clientSends",
                    "summary": "What a client sends",
                    "message": _one_of(CLIENT_MESSAGES),
                },
                "subscribe": {
                    "operationId": "serverSends",
                    "summary": "What the server sends",
                    "message": _one_of(SERVER_MESSAGES),
                },
            }
        },
        "components": {"schemas": schemas, "messages": messages},
        "x-close-codes": [{"code": code, "reason": reason} for code, reason in CLOSE_CODES.items()],
        "x-error-codes": [
            {"code": code, "description": description} for code, description in ERROR_CODES.items()
        ],
    }


def _messages(
    models: Mapping[str, type[BaseModel]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The message components (one per type, its model's schema as the payload, as it
    validates) and the schemas the payloads share."""
    refs, schema = models_json_schema(
        [(model, "validation") for model in models.values()], ref_template=REF_TEMPLATE
    )
    shared: dict[str, Any] = schema.get("$defs", {})
    messages = {}
    for name, model in models.items():
        # A message's schema is its payload, written in place: not a component of its own.
        payload = shared.pop(str(refs[(model, "validation")]["$ref"]).rsplit("/", 1)[-1])
        messages[name] = {
            "name": name,
            "title": name,
            # The first paragraph of the model's docstring.
            "summary": " ".join(payload["description"].split("\n\n", 1)[0].split()),
            "contentType": "application/json",
            "payload": payload,
        }
    return messages, dict(sorted(shared.items()))


def _one_of(models: Mapping[str, type[BaseModel]]) -> dict[str, Any]:
    return {"oneOf": [{"$ref": f"#/components/messages/{name}"} for name in models]}


def _handshake() -> dict[str, Any]:
    """The WebSocket binding: what the opening handshake may carry."""
    return {
        "method": "GET",
        "headers": {
            "type": "object",
            "properties": {
                "X-API-Key": {"type": "string"},
                "Authorization": {
                    "type": "string",
                    "description": "Bearer <key or session token>",
                },
                "Origin": {"type": "string", "description": "checked against WS_ALLOWED_ORIGINS"},
            },
        },
        "query": {
            "type": "object",
            "properties": {
                "token": {
                    "type": "string",
                    "description": "a session token (POST /v2/auth/token), for browsers",
                },
                "api_key": {
                    "type": "string",
                    "description": "deprecated: the key itself (use token)",
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
