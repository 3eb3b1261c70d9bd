"""A webhook receiver for defi-realtime's alert notifications, verifying every request.

The server signs each POST (``src/adapters/webhook_notifier.py``):

* ``X-Signature``: hex HMAC-SHA256, keyed with the channel's secret, over
  ``timestamp + "." + body`` (the raw body bytes);
* ``X-Signature-Timestamp``: that timestamp, unix seconds;
* ``X-Idempotency-Key``: the same for every attempt of one notification.

This receiver answers

* 401 to a missing or wrong signature (checked in constant time);
* 401 to a timestamp more than ``--tolerance`` seconds away from its clock: an old request
  replayed later is refused even though its signature is right;
* 200 ``{"duplicate": true}`` without acting again to a notification whose idempotency key
  it has already handled within the tolerance window: the sender's own retries (delivery is
  at least once) and a replay inside the window are handled once;
* 200 after acting (here: printing the alert as a JSON line) to anything else.

Only the standard library: a receiver is a separate service, it does not need this
package. Run it, then give your alert rule a channel
``{"kind": "webhook", "url": "http://HOST:PORT/hook", "secret": "..."}``::

    python examples/webhook_receiver.py --port 9000 --secret "$WEBHOOK_SECRET"

``--max-events`` bounds a run (tests, demos).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_TOLERANCE = 300.0
MAX_BODY = 1024 * 1024


class Rejected(Exception):
    """A request that must not be acted upon; ``status`` is the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check a request's signature and age; returns its idempotency key or raises
    :class:`Rejected`. ``headers``' names in lower case."""
    signature = headers.get("x-signature")
    timestamp = headers.get("x-signature-timestamp")
    key = headers.get("x-idempotency-key")
    if not signature or not timestamp or not key:
        raise Rejected(401, "missing signature headers")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Rejected(401, "bad timestamp") from None
    if abs(now - sent_at) > tolerance:
        raise Rejected(401, "timestamp outside the tolerance: replayed or clock skew")
    # The signature covers the timestamp: changing it to look fresh breaks the signature.
    if not hmac.compare_digest(signature, expected_signature(secret, timestamp, body)):
        raise Rejected(401, "bad signature")
    return key


class SeenKeys:
    """Idempotency keys handled within the tolerance window (older ones cannot come back:
    their timestamps are refused)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, key: str, now: float) -> bool:
        with self._lock:
            # Keep the seen keys for twice the tolerance (a request may be stamped up to
            # ``tolerance`` in the future of our clock, or in its past).
            while self._seen and next(iter(self._seen.values())) < now - 2 * self.ttl:
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
            return True


def make_server(
    host: str,
    port: int,
    secret: str,
    on_alert: Callable[[dict[str, Any]], None],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    clock: Callable[[], float] = time.time,
    answered: Callable[[], None] | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server whose POSTs are verified, deduplicated, then given to ``on_alert``;
    ``answered`` is called once the sender has its 200 for an alert acted upon."""
    seen = SeenKeys(tolerance)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._answer(413, {"error": "body too large"})
                self.close_connection = True
                return
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            now = clock()
            try:
                key = verify(secret, headers, body, now=now, tolerance=tolerance)
                alert = json.loads(body)
            except Rejected as rejected:
                self._answer(rejected.status, {"error": rejected.reason})
                return
            except ValueError:
                self._answer(400, {"error": "body is not JSON"})
                return
            if not seen.first_time(key, now):
                self._answer(200, {"duplicate": True})
                return
            on_alert(alert)
            self._answer(200, {"ok": True})
            self.wfile.flush()
            if answered is not None:
                answered()

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the JSON lines on stdout are the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0: a free port")
    parser.add_argument("--secret", required=True, help="the channel's secret")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="seconds")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N alerts")
    args = parser.parse_args(argv)

    handled = 0
    done = threading.Event()

    def on_alert(alert: dict[str, Any]) -> None:
        # Act on it here (page someone, pause a strategy...); this example prints it.
        print(json.dumps({"alert": alert}), flush=True)

    def answered() -> None:
        nonlocal handled
        handled += 1
        if args.max_events is not None and handled >= args.max_events:
            done.set()

    server = make_server(
        args.host, args.port, args.secret, on_alert, tolerance=args.tolerance, answered=answered
    )
    host, port = server.server_address[:2]
    print(json.dumps({"listening": f"http://{host!s}:{port}/hook"}), flush=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
