"""A real ``defi-realtime serve`` subprocess on embedded defaults, for tests that need the
command itself (``--workers``) rather than an app in the test process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cluster import CLI, START_TIMEOUT, Process, free_port

__all__ = ["metric_samples", "serve_process"]


@contextlib.contextmanager
def serve_process(
    work_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[Process]:
    """``defi-realtime serve`` on a free port over its own ``DATA_DIR``, once ``/health``
    answers 200; stopped by its PID (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "serve.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [*CLI, "serve", "--port", str(port), "--log-level", "warning", *args],
            env={
                **os.environ,
                "DATA_DIR": str(work_dir / "data"),
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            },
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=work_dir,
        )
    process = Process(name="serve", popen=popen, log_path=log_path, port=port)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=process.base_url, timeout=2.0) as client:
            while True:
                if not process.alive():
                    raise AssertionError(f"serve exited:\n{process.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve not healthy:\n{process.output()}")
                time.sleep(0.1)
        yield process
    finally:
        process.stop()


def metric_samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples of a text exposition by (name, labels), parsed by prometheus_client."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
