"""The lean WebSocket transport: ``/v2/realtime`` over a raw asyncio transport, run by
uvicorn as its ``ws`` protocol class (``uvicorn.run(app, ws=RealtimeWebSocketProtocol)``).

uvicorn parses the HTTP request and hands the socket over on an upgrade. For
``/v2/realtime`` this speaks RFC 6455 itself — no ASGI message dicts, no per-socket task,
no permessage-deflate, frames written straight to the transport with one write per batch
of log entries — which holds a connection in a few KB; any other path goes to uvicorn's
default WebSocket implementation and the ASGI app. Who may connect is ``SocketGateway``'s
decision (``ws_server``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from ..application.realtime import MAX_FRAME_BYTES, Connection
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


# -- RFC 6455 framing -----------------------------------------------------------------------

_SHORT_TEXT_HEADERS: Final = tuple(bytes((0x81, n)) for n in range(126))
_PING: Final = b"\x89\x00"


def _text_header(length: int) -> bytes:
    if length < 126:
        return _SHORT_TEXT_HEADERS[length]
    if length < 65_536:
        return b"\x81\x7e" + length.to_bytes(2, "big")
    return b"\x81\x7f" + length.to_bytes(8, "big")


def _control(opcode: int, payload: bytes) -> bytes:
    return bytes((0x80 | opcode, len(payload))) + payload


def _close_frame(code: int, reason: str) -> bytes:
    return _control(0x8, code.to_bytes(2, "big") + reason.encode()[:120])


def _unmask(payload: bytes, mask: bytes) -> bytes:
    length = len(payload)
    if not length:
        return b""
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(length, "little")


def accept_token(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _http_response(status: str, body: str, extra: str = "") -> bytes:
    payload = body.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n{extra}\r\n"
    ).encode() + payload


_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3


class RealtimeWebSocketProtocol(asyncio.Protocol):
    """``/v2/realtime`` over a raw asyncio transport (a uvicorn ``ws`` protocol class)."""

    __slots__ = (
        "_admission",
        "_app_state",
        "_buffer",
        "_config",
        "_connection",
        "_discarding",
        "_fragments",
        "_gateway",
        "_max_message",
        "_oversized",
        "_server_state",
        "_skip",
        "_skip_final",
        "_state",
        "_timer",
        "_transport",
    )

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: Any = None
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._gateway: SocketGateway | None = app_state.get(GATEWAY_STATE_KEY)
        self._transport: asyncio.Transport | None = None
        self._connection: Connection | None = None
        self._admission: Admission | None = None
        self._state = _HANDSHAKE
        self._buffer = b""
        self._fragments: bytearray | None = None
        self._oversized = False  # the current fragmented message is over MAX_FRAME_BYTES
        self._discarding = False
        self._skip = 0
        self._skip_final = False
        self._timer: asyncio.TimerHandle | None = None
        self._max_message = self._gateway.settings.ws_max_message if self._gateway else 1024 * 1024

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

    def pause_writing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resume_writing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def shutdown(self) -> None:
        """uvicorn is stopping: close with 1001."""
        if self._state == _OPEN:
            self._send_close(1001, "server shutting down")
        elif self._transport is not None and self._state != _CLOSING:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._state == _OPEN:
            self._frames(data)
        elif self._state == _HANDSHAKE:
            self._buffer += data
            if self._admission is None and b"\r\n\r\n" in self._buffer:
                self._handshake()
        elif self._state == _CLOSING:
            self._frames(data)

    # -- handshake -------------------------------------------------------------------------

    def _handshake(self) -> None:
        transport = self._transport
        assert transport is not None
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._reject("400 Bad Request", "malformed request line")
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        if unquote(url.path) != REALTIME_PATH or self._gateway is None:
            self._hand_over()
            return
        if method != "GET":
            self._reject("405 Method Not Allowed", "use GET")
            return
        if headers.get("sec-websocket-version") != "13":
            self._reject(
                "426 Upgrade Required", "WebSocket version 13", "sec-websocket-version: 13\r\n"
            )
            return
        key = headers.get("sec-websocket-key", "")
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            self._reject("400 Bad Request", "missing or invalid Sec-WebSocket-Key")
            return
        self._buffer = rest
        transport.pause_reading()
        query = dict(parse_qsl(url.query))
        task = asyncio.get_running_loop().create_task(self._admit(headers, query, key))
        self._server_state.tasks.add(task)
        task.add_done_callback(self._server_state.tasks.discard)

    async def _admit(self, headers: dict[str, str], query: dict[str, str], key: str) -> None:
        gateway, transport = self._gateway, self._transport
        assert gateway is not None
        assert transport is not None
        try:
            admission = await gateway.admit(headers, query)
        except HandshakeRefused as refused:
            if self._state == _HANDSHAKE:
                # Accept, then close with the reason: the client sees a clear close code.
                self._accept(transport, key)
                self._state = _OPEN
                self._send_close(refused.code, refused.reason)
                transport.resume_reading()
            return
        except Exception:
            log.exception("WebSocket handshake failed")
            if self._state == _HANDSHAKE:
                self._reject("500 Internal Server Error", "handshake failed")
            return
        if self._state != _HANDSHAKE:  # the client went away meanwhile
            gateway.abandon(admission)
            return
        self._admission = admission
        self._tune(transport, gateway.settings)
        self._accept(transport, key)
        self._state = _OPEN
        self._connection = gateway.open(
            admission, close=self._close_from_hub, write=self._write, ping=self._ping
        )
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
    def _accept(transport: asyncio.Transport, key: str) -> None:
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
            b"connection: Upgrade\r\nsec-websocket-accept: "
            + accept_token(key).encode()
            + b"\r\n\r\n"
        )

    def _reject(self, status: str, message: str, extra: str = "") -> None:
        assert self._transport is not None
        self._state = _CLOSED
        self._transport.write(_http_response(status, message, extra))
        self._transport.close()

    def _hand_over(self) -> None:
        """Not ours: uvicorn's own WebSocket implementation serves it through the app."""
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

        transport = self._transport
        assert transport is not None
        self._state = _CLOSED
        self._server_state.connections.discard(self)
        if AutoWebSocketsProtocol is None:
            self._reject("404 Not Found", "no WebSocket here")
            return
        protocol = AutoWebSocketsProtocol(
            config=self._config, server_state=self._server_state, app_state=self._app_state
        )
        protocol.connection_made(transport)
        protocol.data_received(self._buffer)
        transport.set_protocol(protocol)
        self._buffer = b""

    # -- frames in -------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        connection = self._connection
        if connection is not None:
            connection.last_seen = time.monotonic()
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        offset = 0
        while offset < size:
            if self._skip:
                # Discarding the payload of an oversized frame as it streams in.
                taken = min(self._skip, size - offset)
                self._skip -= taken
                offset += taken
                if not self._skip and self._skip_final:
                    self._oversized = False
                    self._too_large()
                continue
            if size - offset < 2:
                break
            first, second = buffer[offset], buffer[offset + 1]
            if first & 0x70 or not second & 0x80:
                self._fail(1002, "protocol error: reserved bits or unmasked frame")
                return
            opcode, final = first & 0x0F, bool(first & 0x80)
            length, header = second & 0x7F, 2
            if length == 126:
                if size - offset < 4:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), 10
            if opcode >= 0x8:
                if length > 125 or not final:
                    self._fail(1002, "protocol error: bad control frame")
                    return
            else:
                so_far = len(self._fragments) if self._fragments is not None else 0
                if opcode == 0 and self._oversized:
                    so_far = MAX_FRAME_BYTES + 1
                if so_far + length > self._max_message:
                    self._fail(1009, "message too big")
                    return
                if so_far + length > MAX_FRAME_BYTES:
                    if opcode != 0 and (self._fragments is not None or self._oversized):
                        self._fail(1002, "protocol error: expected a continuation frame")
                        return
                    if size - offset < header + 4:
                        break
                    offset += header + 4
                    self._fragments = None
                    self._oversized = not final
                    self._skip, self._skip_final = length, final
                    if not length and final:
                        self._too_large()
                    continue
            end = offset + header + 4 + length
            if size < end:
                break
            mask = buffer[offset + header : offset + header + 4]
            payload = _unmask(buffer[offset + header + 4 : end], mask)
            offset = end
            self._frame(opcode, final, payload)
            if self._state == _CLOSED:
                return
        self._buffer = buffer[offset:] if offset < size else b""

    def _frame(self, opcode: int, final: bool, payload: bytes) -> None:
        if opcode == 0x9:  # ping
            if self._transport is not None and self._state == _OPEN:
                self._transport.write(_control(0xA, payload))
        elif opcode == 0xA:  # pong: last_seen was updated on arrival
            pass
        elif opcode == 0x8:
            self._on_close(payload)
        elif self._state != _OPEN:
            pass  # closing: drop data frames
        elif opcode in (0x1, 0x2):
            if self._fragments is not None or self._oversized:
                self._fail(1002, "protocol error: expected a continuation frame")
            elif final:
                self._deliver(payload)
            else:
                self._fragments = bytearray(payload)
        elif opcode == 0x0:
            if self._oversized:
                if final:
                    self._oversized = False
                    self._too_large()
            elif self._fragments is None:
                self._fail(1002, "protocol error: unexpected continuation frame")
            else:
                self._fragments += payload
                if final:
                    message, self._fragments = bytes(self._fragments), None
                    self._deliver(message)
        else:
            self._fail(1002, "protocol error: unknown opcode")

    def _deliver(self, payload: bytes) -> None:
        if self._connection is not None and self._gateway is not None:
            self._gateway.hub.receive(self._connection, payload)

    def _too_large(self) -> None:
        if self._connection is not None and self._gateway is not None:
            # The hub answers frames over MAX_FRAME_BYTES with frame_too_large.
            self._gateway.hub.receive(self._connection, b" " * (MAX_FRAME_BYTES + 1))

    def _on_close(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._state == _OPEN:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
            if code in (1005, 1006, 1015) or code < 1000:
                code = 1002
            transport.write(_control(0x8, code.to_bytes(2, "big")))
        self._state = _CLOSED
        self._stop_connection()
        transport.close()

    # -- frames out ------------------------------------------------------------------------

    def _write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
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

    def _ping(self) -> None:
        if self._transport is not None and self._state == _OPEN:
            self._transport.write(_PING)

    def _close_from_hub(self, code: int, reason: str) -> None:
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

    def _fail(self, code: int, reason: str) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._state == _OPEN:
            transport.write(_close_frame(code, reason))
        self._state = _CLOSED
        self._stop_connection()
        transport.close()
