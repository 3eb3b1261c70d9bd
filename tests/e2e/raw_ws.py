"""A deliberately naive RFC 6455 client over a blocking socket, for conformance tests.

It writes whatever frames a test asks for — reserved bits, unknown opcodes, oversized
control frames, invalid UTF-8, a payload dribbled a byte at a time — which no real client
library lets one send, and reads the server's frames back without interpreting them.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from dataclasses import dataclass
from typing import Final

TEXT: Final = 0x1
BINARY: Final = 0x2
CONTINUATION: Final = 0x0
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0

    @property
    def close_code(self) -> int | None:
        """The status code of a close frame (None for an empty close payload)."""
        assert self.opcode == CLOSE, self
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None


class ConnectionDropped(AssertionError):
    """The server closed the TCP connection where a frame was expected."""


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
) -> bytes:
    """One client frame, masked with a random key unless ``mask`` is False."""
    head = bytes(((0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode & 0xF,))
    length = len(payload)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes((mask_bit | length,))
    elif length < 65_536:
        head += bytes((mask_bit | 126,)) + length.to_bytes(2, "big")
    else:
        head += bytes((mask_bit | 127,)) + length.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    stream = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
        length, "big"
    )
    return head + key + masked


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


class RawWebSocket:
    """One connection to ``path``; every read is bounded by ``timeout`` seconds."""

    def __init__(self, port: int, path: str = "/v2/realtime", timeout: float = 3.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = self._read_until(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n", 1)[0]

    @property
    def accepted(self) -> bool:
        return self.status_line.startswith(b"HTTP/1.1 101")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    def send(self, data: bytes, *, chunk: int | None = None, pause: float = 0.0) -> None:
        """Write raw bytes, optionally ``chunk`` bytes at a time with a ``pause`` between."""
        if chunk is None:
            self.sock.sendall(data)
            return
        for start in range(0, len(data), chunk):
            self.sock.sendall(data[start : start + chunk])
            if pause:
                time.sleep(pause)

    def send_frame(self, opcode: int, payload: bytes = b"", **options: bool | int) -> None:
        self.send(frame(opcode, payload, **options))  # type: ignore[arg-type]

    # -- reading ----------------------------------------------------------------------------

    def _fill(self) -> None:
        data = self.sock.recv(65_536)
        if not data:
            raise ConnectionDropped("the server closed the connection")
        self._buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def recv_frame(self) -> Frame:
        """The next frame from the server (which never masks)."""
        first, second = self._read_exact(2)
        assert not second & 0x80, "server frames are not masked"
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._read_exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read_exact(8), "big")
        return Frame(first & 0xF, self._read_exact(length), bool(first & 0x80), first >> 4 & 0x7)

    def expect(self, opcode: int, payload: bytes | None = None) -> Frame:
        received = self.recv_frame()
        assert received.opcode == opcode, received
        if payload is not None:
            assert received.payload == payload, received
        return received

    def expect_close(self, code: int | None) -> Frame:
        """The server's next frame is a close with ``code``, then the TCP connection ends."""
        received = self.recv_frame()
        assert received.opcode == CLOSE, received
        assert received.close_code == code, (received.close_code, received.payload)
        assert len(received.payload) <= 125
        received.payload[2:].decode()  # the reason is valid UTF-8
        self.expect_eof()
        return received

    def expect_eof(self) -> None:
        """The server closes the TCP connection (within the timeout), sending nothing more."""
        if self._buffer:
            raise AssertionError(f"unexpected data before the end: {self._buffer[:80]!r}")
        try:
            data = self.sock.recv(65_536)
        except ConnectionResetError:
            return
        assert data == b"", f"unexpected data instead of the end: {data[:80]!r}"

    def expect_silence(self, seconds: float = 0.2) -> None:
        """Nothing arrives for ``seconds`` and the connection stays open."""
        assert not self._buffer, self._buffer[:80]
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65_536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(self.timeout)
        raise AssertionError(f"expected silence, got {data[:80]!r}")
