"""The one error shape: ``{"error": {"code", "message", "details"}}`` with a 4xx/5xx status."""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .logs import REQUEST_ID, REQUEST_ID_HEADER
from .schemas.common import Error, ErrorInfo


class ApiError(Exception):
    """An answer other than success: raised by handlers, rendered by ``api_error_handler``."""

    def __init__(self, status: int, code: str, message: str, details: Any | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_response(status: int, code: str, message: str, details: Any | None = None) -> Response:
    """The error shape as a response, rendered by the ``Error`` model the OpenAPI document
    shows for every 4xx."""
    answer = Error(error=ErrorInfo(code=code, message=message, details=details))
    return Response(answer.model_dump_json(), status_code=status, media_type="application/json")


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    response = error_response(
        exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail)
    )
    # A 405 says which methods the path serves (RFC 9110).
    response.headers.update(exc.headers or {})
    return response


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    response = error_response(500, "internal_error", "internal server error")
    # Starlette re-raises the exception after this response so the server can log it, and
    # uvicorn then closes the connection. Say so: a keep-alive client would otherwise send
    # its next request on the dying connection and get a transport error for a request the
    # app never saw (ambiguous for an ingest: committed or not?).
    response.headers["Connection"] = "close"
    # This answer comes from outside the middleware that echoes the request id.
    request_id = REQUEST_ID.get()
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response
