"""The HTTP edge: uvicorn's httptools protocol with a deadline and size limits on request
heads, answering what it refuses before the app in the API's JSON error shape.

uvicorn waits for a request head as long as the client cares to dribble it (its keep-alive
timeout restarts on every byte), lets heads grow without bound, and refuses malformed ones
with a ``text/plain`` 400. ``HeadGuardedHttpProtocol`` adds, per connection:

- a timer from the connection's start, or the end of the previous response, until the
  head is complete (``HTTP_HEADER_TIMEOUT``): on expiry 408 ``request_timeout`` and the
  connection is dropped. WebSocket handshakes are request heads too, so they are covered;
- limits on the URL (414 ``uri_too_long``), the header fields (431
  ``request_header_fields_too_large``) and the raw bytes of an unfinished head (431);
- ``{"error": {"code", "message", "details"}}`` for every refusal, 400 ``invalid_request``
  for heads the parser cannot read.

Give it to uvicorn as ``http=head_guarded_http(settings.http_header_timeout)``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# httptools' URL parser keeps offsets in 16 bits: past this uvicorn fails on any URL.
MAX_URL_BYTES: Final = 65_535
MAX_HEADER_BYTES: Final = 64 * 1024  # names and values together
MAX_HEADER_FIELDS: Final = 100  # as Apache's LimitRequestFields
# httptools buffers a header line until it ends: this bounds an unfinished head's bytes.
MAX_HEAD_BYTES: Final = MAX_URL_BYTES + MAX_HEADER_BYTES + 4 * 1024


def error_response(
    status: int,
    code: str,
    message: str,
    default_headers: list[tuple[bytes, bytes]] | None = None,
) -> bytes:
    """A complete ``connection: close`` HTTP/1.1 response in the API's error shape."""
    body = json.dumps(
        {"error": {"code": code, "message": message, "details": None}}, separators=(",", ":")
    ).encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())]
    lines.extend(name + b": " + value + b"\r\n" for name, value in default_headers or ())
    lines.append(
        b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % len(body)
    )
    return b"".join(lines) + body


class _HeadRefused(Exception):
    """Raised in a parser callback to stop parsing a head we refuse."""


class HeadGuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and limits (see module)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        header_timeout: float,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True  # the bytes arriving now belong to a request head
        self._head_begun = False  # ... and some of them have arrived
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_fields = 0
        # What ``send_400_response`` answers when a callback of ours stopped the parser.
        self._refusal: tuple[int, str, str] | None = None

    # -- the deadline ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        super().handle_websocket_upgrade()
        # The socket belongs to the WebSocket protocol now and this one is dropped. Its
        # parser calls back into it (a reference cycle): left alone, each upgrade is
        # garbage only a collection frees, and with GC_REFREEZE one frozen mid-handshake
        # would never be freed (ADR 0054). Without the parser, reference counting frees it.
        self._cancel_head_timer()
        self.parser = None  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Nothing in flight (no pipelined request started): the client owes the next head.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self._refuse(
                408,
                "request_timeout",
                f"the request head was not complete within {self.header_timeout:g} s",
            )
        else:  # an idle kept-alive connection: nothing to answer
            self.transport.close()

    # -- the limits ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse(
                431,
                "request_header_fields_too_large",
                f"the request head is over {MAX_HEAD_BYTES} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_begun = True
        self._header_bytes = self._header_fields = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_URL_BYTES:
            self._stop(414, "uri_too_long", f"the URL is over {MAX_URL_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_fields += 1
        self._header_bytes += len(name) + len(value)
        if self._header_fields > MAX_HEADER_FIELDS:
            self._stop(
                431,
                "request_header_fields_too_large",
                f"more than {MAX_HEADER_FIELDS} header fields",
            )
        if self._header_bytes > MAX_HEADER_BYTES:
            self._stop(
                431,
                "request_header_fields_too_large",
                f"the header fields are over {MAX_HEADER_BYTES} bytes",
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = self._head_begun = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # whatever follows is the next request's head

    # -- refusing ----------------------------------------------------------------------------

    def _stop(self, status: int, code: str, message: str) -> None:
        # httptools turns an exception in a callback into HttpParserCallbackError, which
        # uvicorn answers through send_400_response.
        self._refusal = (status, code, message)
        raise _HeadRefused(message)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a head its parser (or one of our limits) refused."""
        refusal, self._refusal = self._refusal, None
        if refusal is None:
            refusal = (400, "invalid_request", "the request is not valid HTTP/1.1")
        self._refuse(*refusal)

    def _refuse(self, status: int, code: str, message: str) -> None:
        self._cancel_head_timer()
        self.transport.write(
            error_response(status, code, message, self.server_state.default_headers)
        )
        self.transport.close()


def head_guarded_http(header_timeout: float) -> Callable[..., HeadGuardedHttpProtocol]:
    """The protocol factory for ``uvicorn.run(http=...)``. A ``functools.partial`` of a
    module-level class, so that uvicorn can pickle it into ``--workers`` processes."""
    return functools.partial(HeadGuardedHttpProtocol, header_timeout=header_timeout)
