"""A real HTTP server standing in for a customer's webhook endpoint (tests and benches).

``http.server`` in a background thread on 127.0.0.1 and a free port. ``respond(n)`` decides
the answer to the n-th request (1-based): a status, or ``(status, seconds to wait first)``
for a slow receiver. Every request is recorded with its arrival time (``time.perf_counter``),
headers and raw body. ``close`` releases handlers still waiting and stops the server.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[int], "int | tuple[int, float]"]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client closing its keep-alive connection (a sender stopping) is not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class Received:
    number: int
    arrived_at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class WebhookReceiver:
    def __init__(self, respond: Respond = lambda _n: 200) -> None:
        self.respond = respond
        self.requests: list[Received] = []
        self.answered: set[int] = set()
        """Numbers of the requests that got their answer (a slow one may never)."""
        self._changed = threading.Condition()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints

            def do_POST(self) -> None:
                arrived = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._changed:
                    number = len(receiver.requests) + 1
                    answer = receiver.respond(number)
                    status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
                    receiver.requests.append(
                        Received(
                            number=number,
                            arrived_at=arrived,
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                            status=status,
                        )
                    )
                    receiver._changed.notify_all()
                if delay and receiver._release.wait(delay):
                    return  # closing: drop the connection without answering
                reply = b'{"ok":true}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                self.wfile.flush()
                with receiver._changed:
                    receiver.answered.add(number)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/hook"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def successes(self) -> list[Received]:
        """Requests answered with a 2xx."""
        return [r for r in self.requests if r.number in self.answered and 200 <= r.status < 300]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Block until ``count`` requests arrived (bounded); returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(
                    f"receiver got {len(self.requests)} request(s), expected {count} "
                    f"within {timeout}s"
                )
            return list(self.requests)

    def wait_for_request(
        self, matches: Callable[[Received], bool], timeout: float = 10.0
    ) -> Received:
        """Block until a request matching ``matches`` arrived (bounded); returns it."""
        found: list[Received] = []

        def arrived() -> bool:
            found.extend(r for r in self.requests if matches(r))
            return bool(found)

        with self._changed:
            if not self._changed.wait_for(arrived, timeout):
                raise AssertionError(f"no matching request within {timeout}s")
        return found[0]

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
