"""WebSocket load generator: many lean client sockets in one process (127.0.0.1 only).

    python bench/ws_loadgen.py --port P --clients N [--flavor ours|plain|socketio]
        [--subscribe-json FILE] [--batch] [--no-read] [--seconds S]
        [--data-clock WALL0,DATA0,SPEED]

Run by ``bench/bench_ws_scale.py`` and ``bench/bench_soak.py`` (several of these processes
side by side). Speaks just
enough RFC 6455 for a client (zero masking key, no extensions), and, for ``socketio``,
enough Engine.IO 4 / Socket.IO 5 to join the default namespace and answer pings.

Line protocol with the parent on stdin/stdout (one JSON object per line out):
- out ``{"event":"ready","connected":n,"failed":m}`` once every socket is open (or failed;
  for ``ours``, open means every subscription of the greeting was answered ``subscribed``);
- in ``reset``: forget the counts and latencies so far; in ``report``: out
  ``{"event":"report","connected","window_s",...}`` with the counts and the latency
  histogram since the last reset (``window_s`` long; latency = frame arrival minus the
  update's ``timestamp``, which the sender sets to the ``time.time()`` it was due);
- in ``quit`` (or end of input, or ``--seconds`` elapsed): close everything and exit.

Every update carries ``"timestamp":<unix seconds>``; the client finds it by a byte search,
not a JSON parse, to keep the generator's own CPU per frame small. With ``--data-clock`` the
sender's ``observed_at`` runs on a data clock, ``DATA0 + (wall - WALL0) * SPEED``
(``bench_soak.py``): the wall time an update was due is then ``WALL0 + (timestamp - DATA0) /
SPEED``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import sys
import threading
import time
from typing import Any

from _common import HOST, run_async

MAX_CLIENTS = 6_000
MAX_SECONDS = 3 * 3_600.0  # the soak's hour and its setup fit
BUCKETS = 100_000  # 0.1 ms buckets up to 10 s
_TIMESTAMP = b'"timestamp":'
_SUBSCRIBED = b'{"type":"subscribed"'


class Stats:
    """Counts since the last ``reset``; a reset replaces the whole object (see ``commands``)."""

    def __init__(self) -> None:
        self.histogram = [0] * BUCKETS
        self.frames = 0
        self.updates = 0
        self.since = time.monotonic()


STATS = Stats()
# The data clock (wall0, data0, speed): identity unless --data-clock.
CLOCK = (0.0, 0.0, 1.0)
CLOSES: dict[int, int] = {}  # close codes received, over the whole run


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame with a zero masking key (the payload stays as is)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 65_536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\x00\x00\x00\x00" + payload


class Client(asyncio.Protocol):
    def __init__(
        self,
        path: str,
        greeting: list[bytes],
        flavor: str,
        read: bool,
        opened: asyncio.Future[bool],
    ) -> None:
        self.path = path
        self.greeting = greeting
        self.flavor = flavor
        self.read = read
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.handshaken = False
        self.closed = False
        # ours: open only once every subscription is confirmed, so that no update sent
        # after "ready" can miss a client that is still subscribing.
        self.unconfirmed = len(greeting) if flavor == "ours" else 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_result(False)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.handshaken:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self.opened.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.handshaken = True
            buffer = buffer[end + 4 :]
            assert self.transport is not None
            if self.flavor != "socketio":
                for message in self.greeting:
                    self.transport.write(client_frame(message))
                if not self.unconfirmed:
                    self._open()
        self.buffer = self._frames(buffer)

    def _open(self) -> None:
        assert self.transport is not None
        if not self.read:
            self.transport.pause_reading()
        if not self.opened.done():
            self.opened.set_result(True)

    def _frames(self, buffer: bytes) -> bytes:
        offset, size = 0, len(buffer)
        now = time.time()
        wall0, data0, speed = CLOCK
        stats = STATS
        histogram = stats.histogram
        frames = updates = 0
        while size - offset >= 2:
            first, length = buffer[offset], buffer[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if size - offset < 4:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), 10
            end = offset + header + length
            if end > size:
                break
            opcode = first & 0x0F
            start = offset + header
            offset = end
            if opcode == 0x1:
                frames += 1
                at = buffer.find(_TIMESTAMP, start, end)
                while at >= 0:
                    at += len(_TIMESTAMP)
                    stop = at
                    while stop < end and buffer[stop] not in b",}]":
                        stop += 1
                    try:
                        latency = now - (wall0 + (float(buffer[at:stop]) - data0) / speed)
                    except ValueError:
                        latency = -1.0
                    if latency >= 0:
                        histogram[min(int(latency * 10_000), BUCKETS - 1)] += 1
                        updates += 1
                    at = buffer.find(_TIMESTAMP, stop, end)
                if self.flavor == "socketio":
                    self._engine_io(buffer[start:end])
                elif self.unconfirmed:  # (with ?batch=1 a frame is an array of messages)
                    self.unconfirmed -= buffer.count(_SUBSCRIBED, start, end)
                    if self.unconfirmed <= 0:
                        self.unconfirmed = 0
                        self._open()
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(client_frame(buffer[start:end], 0xA))
            elif opcode == 0x8:
                code = int.from_bytes(buffer[start : start + 2], "big") if length >= 2 else 1005
                CLOSES[code] = CLOSES.get(code, 0) + 1
                if self.transport is not None:
                    self.transport.close()
        stats.frames += frames
        stats.updates += updates
        return buffer[offset:] if offset < size else b""

    def _engine_io(self, packet: bytes) -> None:
        assert self.transport is not None
        if packet == b"2":  # Engine.IO ping
            self.transport.write(client_frame(b"3"))
        elif packet.startswith(b"0{"):  # Engine.IO open: join the default namespace
            self.transport.write(client_frame(b"40"))
        elif packet.startswith(b"40") and not self.opened.done():
            self._open()


async def open_clients(args: argparse.Namespace, greetings: list[list[bytes]]) -> list[Client]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    clients: list[Client] = []

    async def one(index: int) -> None:
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            client = Client(
                args.path, greetings[index % len(greetings)], args.flavor, not args.no_read, opened
            )
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            if args.no_read:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            try:
                await asyncio.wait_for(loop.sock_connect(sock, (HOST, args.port)), 20)
                await loop.create_connection(lambda: client, sock=sock)
                await asyncio.wait_for(opened, 30)
            except (OSError, TimeoutError):
                sock.close()
                return
            if opened.result():
                clients.append(client)

    await asyncio.gather(*(one(i) for i in range(args.clients)))
    return clients


def load_greetings(path: str) -> list[list[bytes]]:
    with open(path) as file:
        return [[json.dumps(m).encode() for m in messages] for messages in json.load(file)]


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--flavor", choices=("ours", "plain", "socketio"), default="ours")
    parser.add_argument("--path", default=None)
    parser.add_argument(
        "--subscribe-json",
        default=None,
        help="file: a JSON list, one entry per client (cycled): the list of messages it "
        "sends after the handshake",
    )
    parser.add_argument("--batch", action="store_true", help="ours: ?batch=1")
    parser.add_argument("--no-read", action="store_true", help="never read (slow consumer)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument(
        "--data-clock",
        default=None,
        help="WALL0,DATA0,SPEED: timestamps are data time DATA0 + (wall - WALL0) * SPEED",
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be within 1..{MAX_CLIENTS}")
    args.seconds = min(args.seconds, MAX_SECONDS)
    raise_fd_limit(args.clients + 100)
    if args.data_clock:
        global CLOCK
        wall0, data0, speed = (float(part) for part in args.data_clock.split(","))
        if speed <= 0:
            parser.error("--data-clock: SPEED must be positive")
        CLOCK = (wall0, data0, speed)
    if args.path is None:
        args.path = {
            "ours": "/v2/realtime" + ("?batch=1" if args.batch else ""),
            "plain": "/ws",
            "socketio": "/socket.io/?EIO=4&transport=websocket",
        }[args.flavor]
    greetings = load_greetings(args.subscribe_json) if args.subscribe_json else [[]]
    started = time.monotonic()
    clients = await open_clients(args, greetings)
    emit({"event": "ready", "connected": len(clients), "failed": args.clients - len(clients)})

    threading.Thread(target=commands, args=(clients,), daemon=True).start()
    await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def commands(clients: list[Client]) -> None:
    """Answer the parent's commands from a thread of their own.

    Under a flood of frames one turn of the event loop can take tens of seconds (libuv
    reads every ready socket dry, and each frame is parsed here), and the parent must
    still get its report in time. Frames are counted into whatever ``STATS`` was when a
    read began, so a ``reset`` (a new object) never races with a count.
    """
    global STATS
    for line in sys.stdin:
        command = line.strip()
        if command == "reset":
            STATS = Stats()
        elif command == "report":
            stats = STATS
            emit(
                {
                    "event": "report",
                    "connected": len(clients),
                    "window_s": time.monotonic() - stats.since,
                    "frames": stats.frames,
                    "updates": stats.updates,
                    "open": sum(1 for client in clients if not client.closed),
                    "closes": dict(CLOSES),
                    "histogram": {i: n for i, n in enumerate(stats.histogram) if n},
                }
            )
        elif command == "quit":
            break
    # quit or end of input: leave at once (the kernel closes the sockets), even if the
    # event loop is still behind on a flood of frames.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    run_async(main)
