"""What the benchmark scripts share: ``defi-realtime`` as a subprocess, and for the reports
percentiles, per-scenario timings and the machine line.

Imported as ``from _common import ...``: the scripts run as ``python bench/NAME.py``, which
puts bench/ on ``sys.path``. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STARTUP_SECONDS = 60.0
# Variables that would point the CLI at external services instead of the embedded store.
EXTERNAL_ENV = ("DATABASE_URL", "REDIS_URL", "AMQP_URL", "STOCK_POSTGRES_RECORDER")


# --- the CLI in a subprocess -------------------------------------------------------------


def embedded_env() -> dict[str, str]:
    """This process's environment without ``EXTERNAL_ENV``: the CLI uses the embedded store."""
    return {k: v for k, v in os.environ.items() if k not in EXTERNAL_ENV}


def cli_command() -> list[str]:
    """The ``defi-realtime`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("defi-realtime")
    if script.exists():
        return [str(script)]
    found = shutil.which("defi-realtime")
    return [found] if found else [sys.executable, "-m", "defi_realtime.entrypoints.cli"]


def create_key(
    env: dict[str, str],
    *options: str,
    cwd: Path | None = None,
    cli: Sequence[str] | None = None,
) -> str:
    """``defi-realtime keys create --name bench OPTIONS``: the new key (``cli``: another
    ``defi-realtime`` than this environment's)."""
    done = subprocess.run(
        [*(cli or cli_command()), "keys", "create", "--name", "bench", *options],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"keys create failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())``, on uvloop when it is installed (as uvicorn uses it)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class CliProcess:
    """``defi-realtime ARGS`` in a subprocess, its output in ``log_path``; stopped by its PID."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: dict[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [*cli_command(), *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_healthy(self, port: int) -> None:
        """Wait until ``GET /health`` on ``port`` answers 200 (at most ``STARTUP_SECONDS``)."""
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            # http.client rather than urllib: no proxy settings apply to 127.0.0.1.
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                connection.request("GET", "/health")
                healthy = connection.getresponse().status == 200
            except (OSError, http.client.HTTPException):
                healthy = False
            finally:
                connection.close()
            if healthy:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not healthy after {STARTUP_SECONDS:g}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if self.popen.poll() is not None:
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=15)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4_000:]
        return ""


async def send_requests(
    port: int, requests: Iterable[bytes], latencies: list[float], statuses: dict[int, int]
) -> None:
    """Send each of ``requests`` (whole HTTP/1.1 requests) in turn over one keep-alive
    connection, reading each answer; its latency (seconds) and status are appended."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for request in requests:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


# --- figures -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    """n, p50, p95, p99 and max of ``values``."""
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else float("nan"),
    }


Runs = dict[str, list[tuple[float, float]]]
"""Per scenario, (wall seconds, CPU seconds of this process) of each run."""


@dataclass(frozen=True)
class Timing:
    """A scenario's runs: median wall and CPU seconds, and every run's wall as "1.2, 1.3"."""

    wall: float
    cpu: float
    walls: str


def timings(runs: Runs) -> dict[str, Timing]:
    return {
        name: Timing(
            statistics.median(wall for wall, _ in done),
            statistics.median(cpu for _, cpu in done),
            ", ".join(f"{wall:.1f}" for wall, _ in done),
        )
        for name, done in runs.items()
    }


def cpu_pressure() -> str:
    """Linux PSI: share of the last 60 s in which some runnable task waited for a CPU
    ("" where the kernel does not say)."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return ""
    fields = dict(part.split("=") for part in line.split()[1:])
    return f"CPU pressure (PSI some avg60) {fields.get('avg60', '?')}%"


def machine() -> str:
    """CPUs, Python, OS, time, load average and CPU pressure, for a report's first lines."""
    pressure = cpu_pressure()
    return (
        f"nproc {len(os.sched_getaffinity(0))}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + (f", {pressure}" if pressure else "")
    )
