"""Fan-out servers for the broadcast comparison in ``bench/bench_ws_scale.py``.

    python bench/ws_fanout_servers.py --mode hub|naive|socketio --port P

Each serves WebSocket clients on 127.0.0.1 and broadcasts synthetic updates produced by
the same in-process ticker (every 10 ms, ``rate`` updates per second in all; each carries
``"timestamp": time.time()`` taken when it is produced). The rate is set by lines
``rate N`` on stdin; ``quit`` (or end of input) stops the server.

- ``hub``: our ``RealtimeHub`` behind the lean transport (``RealtimeWebSocketProtocol``
  under uvicorn); each tick is one ``LogBatch`` handed to ``hub.deliver`` (as the node
  follower does); clients subscribe to the ``protocols`` channel.
- ``naive``: Starlette + uvicorn, one loop that ``json.dumps`` the update for each client
  and awaits each ``send_text``.
- ``socketio``: python-socketio's ``AsyncServer.emit`` (a broadcast to every client in
  the namespace) over uvicorn (install with ``pip install python-socketio``: bench only).

All use uvicorn with ``ws_per_message_deflate=False``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

HOST = "127.0.0.1"
TICK = 0.01
PROTOCOLS = [f"protocol-{n}" for n in range(200)]


class Ticker:
    def __init__(self, emit: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> None:
        self.emit = emit
        self.rate = 0.0
        self.sequence = 0

    async def run(self) -> None:
        owed = 0.0
        next_tick = time.monotonic()
        while True:
            next_tick += TICK
            owed += self.rate * TICK
            count = int(owed)
            owed -= count
            if count:
                now = time.time()
                updates = []
                for _ in range(count):
                    self.sequence += 1
                    updates.append(
                        {
                            "id": PROTOCOLS[self.sequence % len(PROTOCOLS)],
                            "value": float(self.sequence),
                            "timestamp": now,
                            "position": self.sequence,
                        }
                    )
                await self.emit(updates)
            delay = next_tick - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_tick = time.monotonic()  # behind: no catch-up burst


async def control(ticker: Ticker, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line.startswith("rate "):
            ticker.rate = float(line.split()[1])
        elif line in ("quit", ""):
            stop.set()
            return


def hub_app() -> tuple[Any, Any]:
    from defi_realtime.application.log import LogBatch, LogEntry
    from defi_realtime.application.realtime import RealtimeHub
    from defi_realtime.entrypoints.settings import Settings
    from defi_realtime.entrypoints.ws_server import (
        GATEWAY_STATE_KEY,
        RealtimeWebSocketProtocol,
        SocketGateway,
    )

    class NoChanges:
        async def get_protocols(self, slugs: Any) -> list[Any]:
            return []

        async def prices(self, tokens: Any) -> list[Any]:
            return []

    hub = RealtimeHub(None, NoChanges())  # type: ignore[arg-type]
    settings = Settings(WS_QUEUE_SIZE=10_000)
    gateway = SocketGateway(hub, settings, lambda key: None)

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
        await hub.deliver(
            LogBatch(after=entries[0].position - 1, last=entries[-1].position, entries=entries)
        )

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

    return (Starlette(routes=[WebSocketRoute("/ws", endpoint)]), "auto"), Ticker(emit)


def socketio_app() -> tuple[Any, Any]:
    import socketio  # type: ignore[import-not-found]

    sio = socketio.AsyncServer(async_mode="asgi", ping_interval=25, ping_timeout=60)

    async def emit(updates: list[dict[str, Any]]) -> None:
        for update in updates:
            await sio.emit("update", update)

    return (socketio.ASGIApp(sio), "auto"), Ticker(emit)


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
    tasks = [
        asyncio.create_task(server.serve()),
        asyncio.create_task(ticker.run()),
        asyncio.create_task(control(ticker, stop)),
    ]
    await stop.wait()
    server.should_exit = True
    for task in tasks[1:]:
        task.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(tasks[0], 5)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
