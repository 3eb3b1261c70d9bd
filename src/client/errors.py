"""What the client raises: the API's error answers, and a stream that cannot go on."""

from __future__ import annotations

from typing import Any

__all__ = ["ApiError", "ClientError", "ResumeGapError", "StreamError"]


class ClientError(Exception):
    """Base of the client's errors."""


class ApiError(ClientError):
    """A 4xx/5xx answer, in the API's error shape ``{"error": {"code", "message", "details"}}``
    (or whatever the server said, when it is not in that shape)."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class StreamError(ClientError):
    """The server refused the subscription (an ``error`` frame answering the subscribe, or a
    close code that retrying cannot fix, such as 4001 for a bad key), or the server stayed
    unreachable for longer than the reconnect policy allows."""

    def __init__(self, message: str, *, code: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ResumeGapError(StreamError):
    """The server could not replay everything after the last position: resuming would
    leave a gap (``recovered: false``, or ``invalid_since`` because the position is beyond
    the log head, as after a restart on another, emptier store)."""
