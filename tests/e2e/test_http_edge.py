"""The HTTP edge before the app: slow or oversized request heads, and requests the HTTP
parser rejects — each answered in the API's JSON error shape, never left holding a
connection (``entrypoints/http_transport.py``)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol
from tests.e2e.conftest import LiveServer, obs, start_server
from tests.e2e.raw_http import assert_json_error, exchange, port_of

HANDSHAKE = (
    b"GET /v2/realtime HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
HEADER_TIMEOUT = 1.0
# How much later than the timeout a slow connection may be dropped (timer granularity, a
# loaded machine).
MARGIN = 2.0


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[LiveServer]:
    with start_server(
        tmp_path / "data", ws=RealtimeWebSocketProtocol, http_header_timeout=HEADER_TIMEOUT
    ) as live:
        yield live


# -- slow request heads ---------------------------------------------------------------------


class Slowloris:
    """Sockets that send a request head a byte at a time and never finish it."""

    def __init__(self, port: int, count: int, head: bytes) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        for sock in self.sockets:
            sock.setblocking(False)
        self.head = head
        self.sent = 0
        self.ended: dict[int, float] = {}
        self.received: dict[int, bytes] = {}

    def step(self, started: float) -> None:
        """One more byte on every open socket; note the ones the server ended."""
        byte = self.head[self.sent % len(self.head) : self.sent % len(self.head) + 1]
        self.sent += 1
        for index, sock in enumerate(self.sockets):
            if index in self.ended:
                continue
            try:
                while chunk := sock.recv(65_536):
                    self.received[index] = self.received.get(index, b"") + chunk
                self.ended[index] = time.monotonic() - started  # recv() == b"": closed
                continue
            except BlockingIOError:
                pass
            except ConnectionResetError:
                self.ended[index] = time.monotonic() - started
                continue
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                sock.send(byte)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def _run_slowloris(live: LiveServer, head: bytes, count: int = 20) -> Slowloris:
    slow = Slowloris(port_of(live), count, head)
    try:
        started = time.monotonic()
        with httpx.Client(base_url=live.base_url, timeout=5) as client:
            while len(slow.ended) < count and time.monotonic() - started < HEADER_TIMEOUT + 3:
                slow.step(started)
                # A normal client is served meanwhile.
                assert client.get("/health").status_code == 200
                time.sleep(0.05)
    finally:
        slow.close()
    return slow


def test_slowloris_request_heads_are_dropped_after_the_header_timeout(lean: LiveServer) -> None:
    slow = _run_slowloris(lean, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200)
    assert len(slow.ended) == 20, f"{20 - len(slow.ended)} slow connections still open"
    assert max(slow.ended.values()) < HEADER_TIMEOUT + MARGIN, slow.ended
    assert min(slow.ended.values()) >= HEADER_TIMEOUT * 0.9, slow.ended
    for answer in slow.received.values():
        assert_json_error(answer, 408, "request_timeout")


def test_a_slow_websocket_handshake_is_dropped_after_the_header_timeout(lean: LiveServer) -> None:
    slow = _run_slowloris(lean, HANDSHAKE[:-2] + b"X-Slow: " + b"a" * 200)
    assert len(slow.ended) == 20
    assert max(slow.ended.values()) < HEADER_TIMEOUT + MARGIN, slow.ended


def test_the_header_timeout_runs_again_for_the_next_request_on_a_kept_alive_connection(
    lean: LiveServer,
) -> None:
    with socket.create_connection(("127.0.0.1", port_of(lean)), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65_536)
        assert first.startswith(b"HTTP/1.1 200"), first
        # uvicorn's keep-alive timeout restarts on every byte: only the header timeout
        # bounds a second request head that never ends.
        started = time.monotonic()
        received = b""
        sock.settimeout(0.1)
        for byte in (b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 500)[:60]:
            try:
                sock.sendall(bytes((byte,)))
                chunk = sock.recv(65_536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            received += chunk
            if not chunk or received.endswith(b"}"):
                break
        ended = time.monotonic() - started
    assert ended < HEADER_TIMEOUT + MARGIN, ended
    assert_json_error(received, 408, "request_timeout")


def test_a_head_completed_within_the_timeout_and_a_slow_body_are_served(lean: LiveServer) -> None:
    item = obs("slow-body", 1.0, 1_765_000_000.0, name="Slow Body")
    body = json.dumps({"observations": [item]}).encode()
    with socket.create_connection(("127.0.0.1", port_of(lean)), timeout=10) as sock:
        head = (
            b"POST /v2/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: "
            + lean.api_key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        for start in range(0, len(head), 20):  # the head in ~0.6 of the timeout
            sock.sendall(head[start : start + 20])
            time.sleep(HEADER_TIMEOUT * 0.6 / (len(head) / 20))
        time.sleep(HEADER_TIMEOUT * 1.5)  # the body arrives after the header timeout
        sock.sendall(body)
        answer = sock.recv(65_536)
    assert answer.startswith(b"HTTP/1.1 200"), answer


# -- heads the HTTP parser rejects ------------------------------------------------------------


def test_a_url_over_the_limit_gets_a_json_414(lean: LiveServer) -> None:
    request = b"GET /v2/protocols?x=" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert_json_error(exchange(port_of(lean), request), 414, "uri_too_long")


def test_a_url_just_under_the_limit_is_served(lean: LiveServer) -> None:
    # It reaches the app, which answers it: here a 400 naming the parameter it does not
    # know (not the edge's 414).
    target = b"/health?x=" + b"a" * 60_000
    request = b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    error = assert_json_error(exchange(port_of(lean), request), 400, "invalid_parameter")
    assert "x" in error["message"]


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 70_000 + b"\r\n", b"X-Many: a\r\n" * 1_000],
    ids=["one-huge-header", "too-many-headers"],
)
def test_request_heads_over_the_limits_get_a_json_431(lean: LiveServer, headers: bytes) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n"
    assert_json_error(exchange(port_of(lean), request), 431, "request_header_fields_too_large")


@pytest.mark.parametrize(
    "request_head",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # TLS to a plain port
        b"GET / HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n",
        b"POST /v2/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
    ],
    ids=["tls", "version", "content-length", "header-line"],
)
def test_malformed_requests_get_a_json_400(lean: LiveServer, request_head: bytes) -> None:
    assert_json_error(exchange(port_of(lean), request_head), 400, "invalid_request")


def test_pipelined_requests_are_all_served(lean: LiveServer) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    answers = exchange(port_of(lean), request * 2 + last)
    assert answers.count(b"HTTP/1.1 200 OK") == 3, answers[:500]


def test_an_idle_kept_alive_connection_is_closed_without_a_408(lean: LiveServer) -> None:
    answers = exchange(port_of(lean), b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answers.startswith(b"HTTP/1.1 200 OK")
    assert b"HTTP/1.1 408" not in answers
