"""The realtime side: the WebSocket protocol (``protocol``), server frames (``frames``),
per-connection outboxes (``outbox``), subscriptions and their index (``subscriptions``),
replays from the log (``replay``) and the hub that routes the log to them (``hub``)."""

from .hub import RealtimeHub
from .outbox import Connection
from .protocol import (
    CHANNELS,
    CLIENT_MESSAGE_TYPES,
    CLOSE_CODES,
    CLOSE_FORBIDDEN,
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_IDLE,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNAUTHORIZED,
    ERROR_CODES,
    FILTER_KEYS,
    MAX_FRAME_BYTES,
    SERVER_MESSAGE_TYPES,
    SUBSCRIBE_FIELDS,
)

__all__ = [
    "CHANNELS",
    "CLIENT_MESSAGE_TYPES",
    "CLOSE_CODES",
    "CLOSE_FORBIDDEN",
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_IDLE",
    "CLOSE_SLOW_CONSUMER",
    "CLOSE_TOO_MANY_CONNECTIONS",
    "CLOSE_UNAUTHORIZED",
    "ERROR_CODES",
    "FILTER_KEYS",
    "MAX_FRAME_BYTES",
    "SERVER_MESSAGE_TYPES",
    "SUBSCRIBE_FIELDS",
    "Connection",
    "RealtimeHub",
]
