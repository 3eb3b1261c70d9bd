"""Raw HTTP/1.1 exchanges over a socket, for tests of what a server answers before (or
instead of) its app: no client library would send these requests or wait like this."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from tests.e2e.conftest import LiveServer


def port_of(live: LiveServer) -> int:
    return int(live.base_url.rsplit(":", 1)[1])


def exchange(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` and read until the server closes the connection (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65_536)
            except ConnectionResetError:
                break
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the server kept the connection open; got {received[:200]!r}")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_json_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    got_status, headers, body = parse_response(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"].startswith("application/json"), headers
    assert int(headers["content-length"]) == len(body)
    document = json.loads(body)
    assert set(document) == {"error"}, document
    error: dict[str, Any] = document["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert error["message"]
    return error
