"""Memory per held WebSocket connection, traced: the server in this process, ``tracemalloc``
over ``--clients`` sockets opened by ``bench/ws_loadgen.py`` in a child process.

    python bench/bench_ws_memory.py [--clients 1000] [--ws MODULE:CLASS] [--top 8]

Lighter than ``bench_ws_scale.py``'s RSS figure at 10k connections (one process, a few
seconds), and it says where the bytes are: Python allocations only (no kernel socket
buffers), by source line. The server is the app over a fresh embedded ``DATA_DIR`` under
uvicorn with the same HTTP and WebSocket protocol classes as ``defi-realtime serve``
(``--ws`` swaps in another WebSocket protocol class, e.g. a prototype, to compare). Each
client subscribes to 5 of 200 protocol ids, as in ``bench_ws_scale.py``. Everything runs on
127.0.0.1; the load generator is stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import HOST, free_port

HERE = Path(__file__).resolve().parent
WARM_UP_CLIENTS = 100


def load_class(spec: str) -> Any:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def where(frame: tracemalloc.Frame) -> str:
    return f"{Path(frame.filename).name}:{frame.lineno}"


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_clients(port: int, count: int, greetings: Path) -> subprocess.Popen[str]:
    """A load generator holding ``count`` subscribed sockets, once it says they are ready."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "ws_loadgen.py"),
            "--port",
            str(port),
            "--clients",
            str(count),
            "--subscribe-json",
            str(greetings),
            "--seconds",
            "300",  # a bound on its lifetime, whatever happens here
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    if ready.get("connected") != count:
        stop(proc)
        raise RuntimeError(f"load generator: {ready}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    try:
        assert proc.stdin is not None
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()  # by this process object's PID
        proc.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1_000)
    parser.add_argument(
        "--ws", default="defi_realtime.entrypoints.ws_transport:RealtimeWebSocketProtocol"
    )
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    if not 1 <= args.clients <= 5_000:
        parser.error("--clients must be within 1..5000")

    import uvicorn

    from defi_realtime.entrypoints.api import create_app
    from defi_realtime.entrypoints.http_transport import head_guarded_http
    from defi_realtime.entrypoints.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="bench-ws-memory-"))
    greetings = work / "subscriptions.json"
    slugs = [f"protocol-{n}" for n in range(200)]
    greetings.write_text(
        json.dumps(
            [
                [
                    {
                        "type": "subscribe",
                        "channel": "protocols",
                        "params": {
                            "protocolIds": [slugs[(n * 5 + k * 37) % 200] for k in range(5)]
                        },
                    }
                ]
                for n in range(args.clients)
            ]
        )
    )
    settings = Settings(DATA_DIR=work / "data", WS_IDLE_TIMEOUT=600, POLL_INTERVAL=0.05)
    config = uvicorn.Config(
        create_app(settings),
        host=HOST,
        port=free_port(),
        log_level="warning",
        lifespan="on",
        http=head_guarded_http(settings.http_header_timeout),  # type: ignore[arg-type]
        ws=load_class(args.ws),
        ws_per_message_deflate=False,
        backlog=4096,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        stop(open_clients(config.port, WARM_UP_CLIENTS, greetings))  # pools, caches, imports
        time.sleep(1)
        gc.collect()
        tracemalloc.start()
        before, rss_before = tracemalloc.take_snapshot(), rss_kb()
        clients = open_clients(config.port, args.clients, greetings)
        try:
            time.sleep(2)
            gc.collect()
            after, rss_after = tracemalloc.take_snapshot(), rss_kb()
        finally:
            stop(clients)
        tracemalloc.stop()
    finally:
        server.should_exit = True
        thread.join(30)
    stats = after.compare_to(before, "lineno")
    traced = sum(stat.size_diff for stat in stats)
    result = {
        "ws": args.ws,
        "clients": args.clients,
        "traced_bytes_per_connection": round(traced / args.clients),
        "rss_kb_per_connection": round((rss_after - rss_before) / args.clients, 2),
        "top": [
            {
                "where": where(stat.traceback[0]),
                "bytes_per_connection": round(stat.size_diff / args.clients),
            }
            for stat in stats[: args.top]
        ],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
