"""The lean WebSocket transport: ``/v2/realtime`` over a raw asyncio transport, run by
uvicorn as its ``ws`` protocol class (``uvicorn.run(app, ws=RealtimeWebSocketProtocol)``).

uvicorn parses the HTTP request and hands the socket over on an upgrade. For
``/v2/realtime`` this speaks RFC 6455 itself — no ASGI message dicts, no per-socket task,
no permessage-deflate, the hub's pre-encoded frames written straight to the transport with
one write per batch of log entries — which holds a connection in about 5 KB. The app has
no other WebSocket route: an upgrade to any other path is answered 404 and closed. Who may
connect is ``SocketGateway``'s decision (``ws_server``).

Inbound frames are parsed here, not by a sans-I/O library: both candidates (websockets'
``Protocol``, wsproto) cost ~1.5 KB more per connection (ADR 0013). The parser is held to
the Autobahn|Testsuite cases of sections 1-7, ported in ``tests/e2e/test_ws_rfc6455.py``.
It reads a data frame's payload as it streams in: text is UTF-8-checked incrementally
(close 1007 on the fragment that breaks it), a message over ``MAX_FRAME_BYTES`` is checked
and dropped, not buffered (the hub answers ``frame_too_large``), a message over
``WS_MAX_MESSAGE`` is refused from its frame header (close 1009).
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import hashlib
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from ..application.realtime import MAX_FRAME_BYTES, Connection
from .http_transport import error_response
from .logs import REQUEST_ID, request_id_from
from .settings import Settings
from .ws_server import (
    GATEWAY_STATE_KEY,
    REALTIME_PATH,
    Admission,
    HandshakeRefused,
    SocketGateway,
)

log = logging.getLogger(__name__)

CLOSE_TIMEOUT: Final = 5.0
WRITE_BUFFER_HIGH: Final = 64 * 1024
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 6455 close codes (section 7.4).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_MESSAGE_TOO_BIG: Final = 1009

_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPCODES: Final = frozenset((_CONTINUATION, _TEXT, _BINARY))
_CONTROL_OPCODES: Final = frozenset((_CLOSE, _PING, _PONG))
_MAX_CONTROL_PAYLOAD: Final = 125
_MAX_CLOSE_REASON: Final = _MAX_CONTROL_PAYLOAD - 2

_SHORT_TEXT_HEADERS: Final = tuple(bytes((0x81, n)) for n in range(126))
_PING_FRAME: Final = b"\x89\x00"
# What the hub is given for a message over MAX_FRAME_BYTES, whose bytes were not kept: it
# measures the message and answers frame_too_large. Built once, not per message.
_OVERSIZED_MESSAGE: Final = b" " * (MAX_FRAME_BYTES + 1)
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def valid_close_code(code: int) -> bool:
    """May a peer send ``code`` in a close frame (RFC 6455 7.4, IANA registry)?"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _text_header(length: int) -> bytes:
    if length < 126:
        return _SHORT_TEXT_HEADERS[length]
    if length < 65_536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def _control(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def _close_frame(code: int, reason: str = "") -> bytes:
    # Cut the reason to fit a control frame without splitting a character.
    encoded = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore").encode()
    return _control(_CLOSE, code.to_bytes(2, "big") + encoded)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if not length:
        return b""
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(length, "little")


def accept_token(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a handshake's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class _ProtocolError(Exception):
    """The peer broke RFC 6455: fail the connection with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


_HANDSHAKE, _ADMITTING, _OPEN, _CLOSING, _CLOSED = range(5)


class RealtimeWebSocketProtocol(asyncio.Protocol):
    """``/v2/realtime`` over a raw asyncio transport (a uvicorn ``ws`` protocol class)."""

    __slots__ = (
        "_admission",
        "_buffer",
        "_connection",
        "_frame_fin",
        "_frame_mask",
        "_frame_read",
        "_frame_remaining",
        "_gateway",
        "_held",
        "_max_message",
        "_message",
        "_message_opcode",
        "_message_size",
        "_server_state",
        "_state",
        "_timer",
        "_transport",
        "_utf8",
    )

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None
    ) -> None:
        self._server_state = server_state
        self._gateway: SocketGateway | None = app_state.get(GATEWAY_STATE_KEY)
        self._transport: asyncio.Transport | None = None
        self._connection: Connection | None = None
        self._admission: Admission | None = None
        self._state = _HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        # A message is waiting for the rate limiter: reading and parsing pause until it is
        # answered, so messages are still answered in order (and before a close after them).
        self._held = False
        self._max_message = self._gateway.settings.ws_max_message if self._gateway else 1024 * 1024
        # Inbound parsing: bytes not parsed yet; the data frame whose payload is streaming
        # in; the data message being assembled (its opcode, announced size, bytes kept while
        # it fits MAX_FRAME_BYTES, and for text a UTF-8 decoder once it spans reads).
        self._buffer = b""
        self._frame_fin = False
        self._frame_mask = b""
        self._frame_read = 0
        self._frame_remaining = 0
        self._message_opcode = 0
        self._message_size = 0
        self._message: bytearray | None = None
        self._utf8: codecs.IncrementalDecoder | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._server_state.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._connection is not None and self._gateway is not None:
            self._gateway.hub.detach(self._connection)
        elif self._admission is not None and self._gateway is not None:
            self._gateway.abandon(self._admission)
        self._connection = None
        self._message = self._utf8 = None

    def pause_writing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resume_writing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1001."""
        if self._state == _OPEN:
            self._count_close(CLOSE_GOING_AWAY)
            self._send_close(CLOSE_GOING_AWAY, "server shutting down")
        elif self._transport is not None and self._state != _CLOSING:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._state in (_OPEN, _CLOSING):
            self._frames(data)
        elif self._state == _HANDSHAKE:
            self._buffer += data
            if b"\r\n\r\n" in self._buffer:
                self._handshake()
        # _ADMITTING: reading is paused; _CLOSED: nothing more is read.

    # -- handshake -------------------------------------------------------------------------

    def _handshake(self) -> None:
        transport = self._transport
        assert transport is not None
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._reject(400, "invalid_request", "malformed request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        if unquote(url.path) != REALTIME_PATH:
            # The app has no other WebSocket route (handing the socket to uvicorn's own
            # implementation made the two point at each other and the socket leak).
            self._reject(404, "not_found", f"no WebSocket endpoint at {url.path[:200]}")
            return
        gateway = self._gateway
        if gateway is None:
            self._reject(503, "unavailable", "the realtime gateway is not running")
            return
        if method != "GET":
            self._reject(405, "method_not_allowed", "a WebSocket handshake is a GET")
            return
        if headers.get("sec-websocket-version") != "13":
            self._reject(
                426,
                "upgrade_required",
                "WebSocket version 13 is required",
                [(b"sec-websocket-version", b"13")],
            )
            return
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            self._reject(400, "invalid_request", "missing or invalid Sec-WebSocket-Key")
            return
        self._buffer = rest
        self._state = _ADMITTING
        transport.pause_reading()
        query = dict(parse_qsl(url.query))
        task = asyncio.get_running_loop().create_task(self._admit(gateway, headers, query, key))
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)

    async def _admit(
        self, gateway: SocketGateway, headers: dict[str, str], query: dict[str, str], key: str
    ) -> None:
        transport = self._transport
        assert transport is not None
        # This task's log lines carry the handshake's request id (entrypoints/logs.py).
        request_id = request_id_from(headers.get("x-request-id"))
        REQUEST_ID.set(request_id)
        try:
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if isinstance(peer, tuple) and peer else None
            admission = await gateway.admit(headers, query, address)
        except HandshakeRefused as refused:
            if self._state == _ADMITTING:
                # Accept, then close with the reason: the client sees a clear close code.
                self._accept(transport, key, request_id)
                self._state = _OPEN
                self._send_close(refused.code, refused.reason)
                transport.resume_reading()
            return
        except Exception:
            log.exception("WebSocket handshake failed")
            if self._state == _ADMITTING:
                self._reject(500, "internal_error", "the handshake failed")
            return
        if self._state != _ADMITTING:  # the client went away meanwhile
            gateway.abandon(admission)
            return
        self._admission = admission
        self._tune(transport, gateway.settings)
        self._accept(transport, key, request_id)
        self._state = _OPEN
        # The connection writes, pings and closes through this protocol (its ``Sink``).
        self._connection = gateway.open(admission, sink=self)
        rest, self._buffer = self._buffer, b""
        transport.resume_reading()
        if rest:
            self._frames(rest)

    @staticmethod
    def _tune(transport: asyncio.Transport, settings: Settings) -> None:
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if settings.ws_send_buffer > 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.ws_send_buffer)
        except (OSError, AttributeError):
            pass

    @staticmethod
    def _accept(transport: asyncio.Transport, key: str, request_id: str) -> None:
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
            b"connection: Upgrade\r\nsec-websocket-accept: "
            + accept_token(key).encode()
            + b"\r\nx-request-id: "
            + request_id.encode("latin-1")
            + b"\r\n\r\n"
        )

    def _reject(
        self,
        status: int,
        code: str,
        message: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Refuse the handshake with an HTTP error in the API's shape, and hang up."""
        assert self._transport is not None
        self._state = _CLOSED
        headers = [*self._server_state.default_headers, *(extra_headers or ())]
        self._transport.write(error_response(status, code, message, headers))
        self._transport.close()

    # -- frames in -------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None:
            connection.last_seen = time.monotonic()
        if self._held:  # read before the pause took effect: parsed once the message is let in
            self._buffer += data
            return
        try:
            self._parse(self._buffer + data if self._buffer else data)
        except _ProtocolError as error:
            self._fail(error.code, error.reason)

    def _parse(self, buffer: bytes) -> None:
        """Consume whole frame headers and control frames, and data payloads as they come;
        keep an incomplete header or control frame in ``_buffer`` for the next read."""
        size = len(buffer)
        offset = 0
        self._buffer = b""
        while offset < size and self._state in (_OPEN, _CLOSING) and not self._held:
            if self._frame_remaining:
                taken = min(self._frame_remaining, size - offset)
                self._payload(buffer[offset : offset + taken])
                offset += taken
                continue
            if size - offset < 2:
                break
            first, second = buffer[offset], buffer[offset + 1]
            opcode, fin = first & 0x0F, bool(first & 0x80)
            if first & 0x70:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
            if not second & 0x80:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "unmasked client frame")
            if opcode not in _DATA_OPCODES and opcode not in _CONTROL_OPCODES:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
            length, header = second & 0x7F, 2
            if length == 126:
                if size - offset < 4:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), 10
            if opcode in _CONTROL_OPCODES:
                if not fin:
                    raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
                if length > _MAX_CONTROL_PAYLOAD:
                    raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "control frame too long")
                end = offset + header + 4 + length
                if size < end:
                    break
                mask = buffer[offset + header : offset + header + 4]
                offset = end
                self._control(opcode, _unmask(buffer[end - length : end], mask))
                continue
            if size - offset < header + 4:
                break
            self._start_frame(opcode, fin, length, buffer[offset + header : offset + header + 4])
            offset += header + 4
            if not length:
                self._end_frame()
        if offset < size and self._state in (_OPEN, _CLOSING):
            self._buffer = buffer[offset:]

    def _start_frame(self, opcode: int, fin: bool, length: int, mask: bytes) -> None:
        if opcode == _CONTINUATION:
            if not self._message_opcode:
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
        elif self._message_opcode:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "expected a continuation frame")
        else:
            self._message_opcode, self._message_size = opcode, 0
            self._message = bytearray()
        self._message_size += length
        if self._message_size > self._max_message:
            # Refused from the header: the payload is neither awaited nor buffered.
            raise _ProtocolError(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if self._message_size > MAX_FRAME_BYTES:
            self._message = None  # too large for the hub: checked, then dropped
        self._frame_fin, self._frame_mask = fin, mask
        self._frame_read, self._frame_remaining = 0, length

    def _payload(self, chunk: bytes) -> None:
        """A piece of the current data frame's payload, as it arrives."""
        read = self._frame_read
        self._frame_read, self._frame_remaining = (
            read + len(chunk),
            self._frame_remaining - len(chunk),
        )
        text = self._message_opcode == _TEXT
        # Once closing, data is read only to find the client's close; a binary message
        # over MAX_FRAME_BYTES is not looked at.
        if self._state == _OPEN and (text or self._message is not None):
            shift = read % 4
            mask = self._frame_mask
            data = _unmask(chunk, mask[shift:] + mask[:shift] if shift else mask)
            if text:
                self._check_utf8(data)
            if self._message is not None:
                self._message += data
        if not self._frame_remaining:
            self._end_frame()

    def _check_utf8(self, data: bytes) -> None:
        """Check text as it arrives: a character split across reads or fragments is fine,
        an invalid sequence fails on the piece that makes it so (Autobahn 6.4)."""
        try:
            if self._utf8 is not None:
                self._utf8.decode(data, False)
            elif self._frame_fin and not self._frame_remaining and len(data) == self._message_size:
                data.decode()  # the whole message in one piece: no decoder to keep
            else:
                self._utf8 = _Utf8Decoder()
                self._utf8.decode(data, False)
        except UnicodeDecodeError as error:
            raise _ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 text") from error

    def _end_frame(self) -> None:
        self._frame_mask = b""
        if not self._frame_fin:
            return
        message, decoder = self._message, self._utf8
        if self._state == _OPEN:
            if decoder is not None:
                try:
                    decoder.decode(b"", True)  # no character left unfinished
                except UnicodeDecodeError as error:
                    raise _ProtocolError(CLOSE_INVALID_DATA, "invalid UTF-8 text") from error
            self._deliver(bytes(message) if message is not None else _OVERSIZED_MESSAGE)
        self._message_opcode = self._message_size = 0
        self._message = self._utf8 = None

    def _deliver(self, payload: bytes) -> None:
        # Text and binary alike: the hub reads JSON from the bytes (text is valid UTF-8 by
        # now; a message over MAX_FRAME_BYTES is answered frame_too_large, not closed).
        gateway = self._gateway
        if self._connection is None or gateway is None:
            return
        if gateway.rate_limits is None:
            gateway.hub.receive(self._connection, payload)
            return
        # The limiter answers asynchronously (Redis): hold the rest of the input until it has.
        assert self._transport is not None
        assert self._admission is not None
        self._held = True
        self._transport.pause_reading()
        task = asyncio.get_running_loop().create_task(
            self._deliver_limited(gateway, self._admission, payload)
        )
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)

    async def _deliver_limited(
        self, gateway: SocketGateway, admission: Admission, payload: bytes
    ) -> None:
        try:
            refusal = await gateway.message_refusal(admission)
            connection = self._connection
            if connection is None or self._state != _OPEN:
                return
            if refusal is None:
                gateway.hub.receive(connection, payload)
            else:
                connection.offer_message(refusal)
        except Exception:
            log.exception("rate-limited delivery failed")
        finally:
            self._held = False
            transport = self._transport
            if self._state in (_OPEN, _CLOSING) and transport is not None:
                transport.resume_reading()
                if self._buffer:
                    self._frames(b"")

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == _PING:
            if self._transport is not None and self._state == _OPEN:
                self._transport.write(_control(_PONG, payload))
        elif opcode == _CLOSE:
            self._on_close(payload)
        # _PONG: an answer to our heartbeat; last_seen was updated on arrival.

    def _on_close(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise _ProtocolError(CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload")
        code = CLOSE_NORMAL
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if not valid_close_code(code):
                raise _ProtocolError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                payload[2:].decode()
            except UnicodeDecodeError as error:
                raise _ProtocolError(CLOSE_INVALID_DATA, "close reason not UTF-8") from error
        transport = self._transport
        if transport is None:
            return
        if self._state == _OPEN:
            # Echo the client's code: the closing handshake is complete on our side.
            self._flush_answers()
            transport.write(_close_frame(code))
        # Otherwise this answers our close.
        self._state = _CLOSED
        self._stop_connection()
        transport.close()

    # -- frames out ------------------------------------------------------------------------

    def write_items(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        transport = self._transport
        if transport is None or self._state != _OPEN:
            return
        parts: list[bytes] = []
        append = parts.append
        for prefix, sid, suffix, _ in items:
            append(_text_header(len(prefix) + len(sid) + len(suffix)))
            append(prefix)
            append(sid)
            append(suffix)
        transport.write(b"".join(parts))

    def write_ping(self) -> None:
        if self._transport is not None and self._state == _OPEN:
            self._transport.write(_PING_FRAME)

    def close_from_hub(self, code: int, reason: str) -> None:
        if self._state == _OPEN:
            self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        """Start the closing handshake; abort if the client does not answer in time."""
        transport = self._transport
        if transport is None:
            return
        self._state = _CLOSING
        self._stop_connection()
        transport.write(_close_frame(code, reason))
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)

    def _stop_connection(self) -> None:
        if self._connection is not None:
            self._connection.closed = True

    def _count_close(self, code: int) -> None:
        """A close this transport decides (shutdown, protocol errors) in the gateway's tally;
        refusals and the hub's closes are counted by the gateway itself."""
        if self._gateway is not None:
            self._gateway.tally.closes[code] += 1

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): a close frame if still open, then hang up."""
        transport = self._transport
        self._buffer = b""
        self._message = self._utf8 = None
        if transport is None:
            return
        if self._state == _OPEN:
            self._flush_answers()
            self._count_close(code)
            transport.write(_close_frame(code, reason))
        self._state = _CLOSED
        self._stop_connection()
        transport.close()

    def _flush_answers(self) -> None:
        """Write what the hub has queued (its answers to the messages that came before the
        frame that ends the connection) ahead of the close frame, not drop it."""
        if self._connection is not None:
            self._connection.flush()
