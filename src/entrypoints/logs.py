"""Logs: one format for the app and uvicorn, a request id on every line of a request, and
no secret in any line.

``configure_logging(level, format)`` installs, through ``logging.config.dictConfig``, one
handler on stderr for the root logger and uvicorn's (``uvicorn``, ``uvicorn.error``,
``uvicorn.access``), formatting either JSON objects (python-json-logger) or text lines.
``serve`` hands the same dictionary to uvicorn (``log_config``); ``worker`` and the other
commands call it directly. Settings: ``LOG_LEVEL``, ``LOG_FORMAT`` (``json`` | ``text``).

Every record passes two filters on the handler:

- ``RequestContext`` adds ``request_id``: the id of the request being served in this
  context (a ``ContextVar`` set by ``RequestIds``, the ASGI middleware), or ``None``;
- ``Redact`` replaces secrets in the rendered message (``?api_key=...``, ``token=...`` and
  the like in a query string, anything shaped like one of our API keys) with
  ``[REDACTED]``: uvicorn's access and WebSocket lines carry the whole URL, and
  ``/v2/realtime?api_key=...`` is how browsers pass a key.

uvicorn's access lines get their parts as fields too (``client``, ``method``, ``path``,
``status``), the path redacted like the message.
"""

from __future__ import annotations

import logging
import logging.config
import re
import uuid
from contextvars import ContextVar
from typing import Any, Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "Redact",
    "RequestContext",
    "RequestIds",
    "configure_logging",
    "logging_config",
    "redact",
    "request_id_from",
]

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER: Final = "X-Request-ID"
# A client's id is kept when it is short and made of characters safe in a log line and a
# header (letters, digits, ``-._:``); otherwise a new one is generated.
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# Query parameters whose values are secrets, in any URL a message carries.
_SECRET_PARAMETER = re.compile(
    r"(?i)(\b(?:api[_-]?key|apikey|key|token|access[_-]?token|auth|authorization|"
    r"password|passwd|secret|session|signature|sig)=)[^&\s\"'#]*"
)
# An API key anywhere (app.py issues ``drt_`` + 43 url-safe characters).
_API_KEY = re.compile(r"\bdrt_[A-Za-z0-9_-]{8,}")
# A session token (a JWT: base64url JSON header ``eyJ...``, payload, signature) anywhere.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED: Final = "[REDACTED]"

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s %(message)s"
JSON_FIELDS: Final = "%(levelname)s %(name)s %(message)s %(request_id)s"
UVICORN_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """``text`` with the secrets it may carry (query-string keys and tokens, API keys,
    session tokens) replaced by ``[REDACTED]``."""
    text = _SECRET_PARAMETER.sub(r"\1" + REDACTED, text)
    return _JWT.sub(REDACTED, _API_KEY.sub(REDACTED, text))


class RequestContext(logging.Filter):
    """Adds ``request_id`` (the request served in this context, or ``None``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class Redact(logging.Filter):
    """Renders the message, redacted (``redact``); uvicorn's access lines also as fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, _version, status = args
            record.client = client
            record.method = method
            record.path = redact(str(path))
            record.status = status
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        # uvicorn's copy of the message with terminal colours: not for a log file.
        record.__dict__.pop("color_message", None)
        if record.exc_info:
            # Formatters print ``exc_text`` when there is no ``exc_info``: the traceback is
            # rendered here, redacted, so that no formatter prints the raw one.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` lines, with ``request_id=...`` at the end of a request's lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return line if request_id is None else f"{line} request_id={request_id}"


def logging_config(level: str = "info", log_format: str = "json") -> dict[str, Any]:
    """The ``dictConfig`` of a process: one stderr handler for the root logger and
    uvicorn's, in ``log_format`` (``json`` or ``text``), at ``level``."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger"},
            # ISO-8601 in UTC, e.g. 2026-12-02T11:07:27.364000+00:00
            "timestamp": "time",
        }
    else:
        formatter = {"()": TextFormatter, "fmt": TEXT_FORMAT}
    handler = ["default"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request": {"()": RequestContext},
            "redact": {"()": Redact},
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request", "redact"],
            }
        },
        "root": {"handlers": handler, "level": level.upper()},
        "loggers": {
            # uvicorn's loggers log through the root handler only (no second line).
            **{
                name: {"handlers": [], "level": level.upper(), "propagate": True}
                for name in UVICORN_LOGGERS
            },
            # Alembic announces each of its plugins at import, at INFO.
            "alembic.runtime.plugins": {"level": "WARNING"},
            # httpx logs every request at INFO: an EVM collector polling a node several
            # times a second would fill the log (failures reach our own loggers).
            "httpx": {"level": "WARNING" if level.lower() == "info" else level.upper()},
        },
    }


def configure_logging(level: str = "info", log_format: str = "json") -> None:
    """Install ``logging_config(level, log_format)`` for this process."""
    logging.config.dictConfig(logging_config(level, log_format))


def request_id_from(value: str | None) -> str:
    """The client's ``X-Request-ID`` when it is sane, else a new id."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value
    return uuid.uuid4().hex


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            return request_id_from(candidate)
    return request_id_from(None)


class RequestIds:
    """ASGI middleware: each HTTP request and WebSocket gets an id (the client's sane
    ``X-Request-ID``, else a new one), set in ``REQUEST_ID`` for every log line of the
    request and echoed on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        # Not reset afterwards: uvicorn logs a failed request's traceback after the app
        # returned, in this same task (one task per request), and it belongs to it.
        REQUEST_ID.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)
