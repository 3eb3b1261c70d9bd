"""Fan-out servers for the broadcast comparison in ``bench/bench_ws_scale.py``.

    python bench/ws_fanout_servers.py --mode hub|naive|socketio --port P

Each serves WebSocket clients on 127.0.0.1 and broadcasts synthetic updates produced by
the same in-process ticker (every 10 ms, ``rate`` updates per second in all; each carries
``"timestamp"``: the ``time.time()`` at which it fell due; see ``Ticker``). The rate is
set by lines ``rate N`` on stdin; ``stats`` prints ``{"produced":n,"dropped":m}`` (totals
so far) on stdout; ``quit`` (or end of input) stops the server.

- ``hub``: our ``RealtimeHub`` behind the lean transport (``RealtimeWebSocketProtocol``
  under uvicorn); each tick is one ``LogBatch`` handed to ``hub.deliver`` (as the node
  follower does); clients subscribe to the ``protocols`` channel.
- ``naive``: Starlette + uvicorn, one loop that ``json.dumps`` the update for each client
  and awaits each ``send_text``.
- ``socketio``: python-socketio's ``AsyncServer.emit`` (a broadcast to every client in
  the namespace) over uvicorn (``pip install -e '.[bench]'``: bench only).

All use uvicorn with ``ws_per_message_deflate=False``; naive and socketio use uvicorn's
``websockets-sansio`` protocol (named, not ``auto``, so the stack does not change with what
else is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from _common import HOST, run_async

TICK = 0.01
MAX_BACKLOG = 1.0  # seconds of owed updates kept when the server falls behind
PROTOCOLS = [f"protocol-{n}" for n in range(200)]


class Ticker:
    """An open-loop producer: ``rate`` updates per second by the clock, whatever ``emit`` costs.

    Updates accrue with elapsed time, not with ticks: a server whose ``emit`` holds the loop
    for longer than a tick gets its whole offered load in a bigger next batch instead of
    silently producing less (which made a slow server look as if its clients lost updates).
    Each update's ``timestamp`` is when it fell due, so the wait behind a slow ``emit``
    counts in the latency. At most ``MAX_BACKLOG`` seconds of owed updates are kept; older
    ones are dropped (and counted), so a server that cannot keep up shows as updates that
    never arrive, not as an ever-growing burst.
    """

    def __init__(self, emit: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        self.emit = emit
        self.rate = 0.0
        self.sequence = 0
        self.produced = 0
        self.dropped = 0

    async def run(self) -> None:
        owed = 0.0
        last = time.time()
        next_tick = time.monotonic()
        while True:
            next_tick += TICK
            now = time.time()
            rate = self.rate
            owed += rate * (now - last)
            last = now
            count = int(owed)
            if count and rate > 0:
                skipped = max(0, count - max(1, int(rate * MAX_BACKLOG)))
                self.dropped += skipped
                updates = []
                for due in range(skipped + 1, count + 1):
                    self.sequence += 1  # contiguous positions: the hub sees no gap
                    updates.append(
                        {
                            "id": PROTOCOLS[self.sequence % len(PROTOCOLS)],
                            "value": float(self.sequence),
                            "timestamp": now - (owed - due) / rate,
                            "position": self.sequence,
                        }
                    )
                owed -= count
                self.produced += len(updates)
                await self.emit(updates)
            elif rate <= 0:
                owed = 0.0
            delay = next_tick - time.monotonic()
            if delay <= 0:
                delay = 0.0  # behind: the next batch carries what is owed
                next_tick = time.monotonic()
            # Always yield, even when behind: an ``emit`` that never suspends (the naive
            # loop, the hub's routing) would otherwise starve the sockets and stdin.
            await asyncio.sleep(delay)


def control(ticker: Ticker, stop: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    """The parent's commands, read in a thread: answered even while the loop is behind."""
    for line in sys.stdin:
        command = line.strip()
        if command.startswith("rate "):
            ticker.rate = float(command.split()[1])
        elif command == "stats":
            counts = {"produced": ticker.produced, "dropped": ticker.dropped}
            sys.stdout.write(json.dumps(counts) + "\n")
            sys.stdout.flush()
        elif command == "quit":
            break
    loop.call_soon_threadsafe(stop.set)


def hub_app() -> tuple[Any, Any]:
    from defi_realtime.application.hot_state import HotState
    from defi_realtime.application.keyring import KeyRing
    from defi_realtime.application.log import LogBatch, LogEntry
    from defi_realtime.application.realtime import RealtimeHub
    from defi_realtime.entrypoints.auth import ApiKeyBackend
    from defi_realtime.entrypoints.settings import Settings
    from defi_realtime.entrypoints.ws_server import GATEWAY_STATE_KEY, SocketGateway
    from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol

    # The node's own fold, applied before the hub routes (as the node follower does): the
    # frames' facts come from it, so its cost is in the figures.
    state = HotState(record_facts=True)
    hub = RealtimeHub(None, state)  # type: ignore[arg-type]
    settings = Settings(WS_QUEUE_SIZE=10_000)
    gateway = SocketGateway(hub, settings, ApiKeyBackend(KeyRing(lambda key: None)))

    async def emit(updates: list[dict[str, Any]]) -> None:
        entries = tuple(
            LogEntry(
                position=u["position"],
                kind="metric",
                key=u["id"],
                data={
                    "metric": "tvl",
                    "chain": "total",
                    "value": u["value"],
                    "observed_at": u["timestamp"],
                },
                recorded_at=u["timestamp"],
            )
            for u in updates
        )
        batch = LogBatch(after=entries[0].position - 1, last=entries[-1].position, entries=entries)
        state.apply(batch)
        await hub.deliver(batch)

    ticker = Ticker(emit)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"][GATEWAY_STATE_KEY] = gateway
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    return (app, RealtimeWebSocketProtocol), ticker


def naive_app() -> tuple[Any, Any]:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    clients: set[WebSocket] = set()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        clients.add(websocket)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
        finally:
            clients.discard(websocket)

    async def emit(updates: list[dict[str, Any]]) -> None:
        for update in updates:
            for websocket in list(clients):
                message = {
                    "type": "update",
                    "channel": "protocols",
                    "subscriptionId": "s1",
                    "position": update["position"],
                    "data": update,
                }
                with contextlib.suppress(Exception):
                    await websocket.send_text(json.dumps(message))

    return (Starlette(routes=[WebSocketRoute("/ws", endpoint)]), "websockets-sansio"), Ticker(emit)


def socketio_app() -> tuple[Any, Any]:
    import socketio  # type: ignore[import-untyped, import-not-found, unused-ignore]

    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=25, ping_timeout=60)

    async def emit(updates: list[dict[str, Any]]) -> None:
        for update in updates:
            await sio.emit("update", update)

    return (socketio.ASGIApp(sio), "websockets-sansio"), Ticker(emit)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=("hub", "naive", "socketio"), required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    (app, ws), ticker = {"hub": hub_app, "naive": naive_app, "socketio": socketio_app}[args.mode]()
    config = uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        log_level="error",
        ws=ws,
        ws_per_message_deflate=False,
        lifespan="on" if args.mode == "hub" else "auto",
        backlog=4096,
    )
    server = uvicorn.Server(config)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(server.serve()), asyncio.create_task(ticker.run())]
    loop = asyncio.get_running_loop()
    threading.Thread(target=control, args=(ticker, stop, loop), daemon=True).start()
    await stop.wait()
    server.should_exit = True
    for task in tasks[1:]:
        task.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(tasks[0], 5)


if __name__ == "__main__":
    run_async(main)
