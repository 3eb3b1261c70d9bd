"""The served logs: JSON lines in one format for the app and uvicorn, a request id on a
request's lines and on its response, and no API key in any line.

The real ``defi-realtime serve`` in a subprocess (its stderr captured), requests made to
it, the process stopped by its PID, then every line parsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from .conftest import LiveServer, issue_key

CLI = str(Path(sys.executable).with_name("defi-realtime"))
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[tuple[str, Path]]:
    """``serve`` on a free port until the block exits; yields its URL and its log file."""
    port = free_port()
    log_path = tmp_path / "serve.log"
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL", "LOG_FORMAT", "LOG_LEVEL"}
    }
    base.update({"DATA_DIR": str(tmp_path / "data"), "PORT": str(port), **env})
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [CLI, "serve"], env=base, stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health/live", timeout=1.0).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield url, log_path
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def json_lines(log_path: Path) -> list[dict[str, Any]]:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message", "request_id"} <= set(record), record
        records.append(record)
    return records


def test_served_lines_are_json_with_request_ids_and_no_key(tmp_path: Path) -> None:
    from defi_realtime.entrypoints.settings import Settings

    key = issue_key(Settings(data_dir=tmp_path / "data"))
    with serving(tmp_path, LOG_FORMAT="json", LOG_LEVEL="info", WS_TRANSPORT="asgi") as (
        url,
        log_path,
    ):
        with httpx.Client(base_url=url, timeout=10.0) as http:
            given = http.get("/v2/protocols", headers={"X-Request-ID": "client-id.42"})
            assert given.headers["X-Request-ID"] == "client-id.42"
            # REST takes the key in a header only (an unknown parameter: 400); the URL is
            # logged all the same.
            keyed = http.get(f"/v2/protocols?api_key={key}&limit=5")
            assert keyed.status_code == 400
            generated = keyed.headers["X-Request-ID"]
            assert len(generated) == 32
            insane = http.get("/health/live", headers={"X-Request-ID": "no spaces <allowed>"})
            replaced = insane.headers["X-Request-ID"]
            assert replaced != "no spaces <allowed>"
            assert (
                len(
                    http.get("/health/live", headers={"X-Request-ID": "x" * 200}).headers[
                        "X-Request-ID"
                    ]
                )
                == 32
            )
            minted = http.post("/v2/auth/token", headers={"X-API-Key": key})
            token = minted.json()["token"]

        async def websocket() -> None:
            ws_url = url.replace("http", "ws") + f"/v2/realtime?api_key={key}"
            headers = {"X-Request-ID": "ws-client-7"}
            async with connect(ws_url, additional_headers=headers) as socket_:
                await socket_.send(json.dumps({"type": "ping"}))
                assert json.loads(await socket_.recv())["type"] == "pong"
            # A session token in the query (how the dashboard connects) is never logged.
            token_url = url.replace("http", "ws") + f"/v2/realtime?token={token}"
            async with connect(token_url) as socket_:
                await socket_.send(json.dumps({"type": "ping"}))
                assert json.loads(await socket_.recv())["type"] == "pong"

        asyncio.run(websocket())
    text = log_path.read_text()
    assert key not in text
    assert key[4:20] not in text
    assert token.rsplit(".", 1)[1] not in text  # not even its signature
    records = json_lines(log_path)
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    by_id = {r["request_id"]: r for r in access}
    assert by_id["client-id.42"]["path"] == "/v2/protocols"
    assert by_id["client-id.42"]["status"] == 200
    assert by_id["client-id.42"]["method"] == "GET"
    assert by_id[generated]["path"] == "/v2/protocols?api_key=[REDACTED]&limit=5"
    assert by_id[generated]["status"] == 400
    assert "[REDACTED]" in by_id[generated]["message"]
    assert by_id[replaced]["path"] == "/health/live"
    # uvicorn's own WebSocket line, from its error logger: the id, and no key.
    accepted = [r for r in records if "WebSocket" in r["message"] and "accepted" in r["message"]]
    assert accepted, records
    assert accepted[0]["request_id"] == "ws-client-7"
    assert accepted[0]["logger"] == "uvicorn.error"
    assert "api_key=[REDACTED]" in accepted[0]["message"]
    # Lines outside a request carry no id; the server's own start and stop lines are JSON.
    assert any(r["request_id"] is None and "startup" in r["message"] for r in records)
    assert not any("color_message" in r for r in records)


def test_log_level_is_honoured(tmp_path: Path) -> None:
    with serving(tmp_path, LOG_FORMAT="json", LOG_LEVEL="warning") as (url, log_path):
        response = httpx.get(f"{url}/health/live", headers={"X-Request-ID": "t-1"})
        assert response.headers["X-Request-ID"] == "t-1"
    text = log_path.read_text()
    # At warning, neither the access lines nor uvicorn's start-up lines are written.
    assert "GET /health/live" not in text
    assert "Application startup complete" not in text


def test_text_lines_carry_the_request_id(tmp_path: Path) -> None:
    with serving(tmp_path, LOG_FORMAT="text", LOG_LEVEL="info") as (url, log_path):
        httpx.get(f"{url}/health/live", headers={"X-Request-ID": "t-2"})
    lines = [line for line in log_path.read_text().splitlines() if "GET /health/live" in line]
    assert not lines[-1].startswith("{")
    # The last one is the test's (``serving`` polled the same path while it started).
    assert lines[-1].endswith(" 200 request_id=t-2"), lines


async def test_the_lean_websocket_handshake_echoes_the_request_id(server: LiveServer) -> None:
    async with connect(
        f"{server.ws_url}?api_key={server.api_key}",
        additional_headers={"X-Request-ID": "ws-lean-1"},
    ) as given:
        assert given.response is not None
        assert given.response.headers["x-request-id"] == "ws-lean-1"
    async with connect(server.ws_url, additional_headers=server.headers) as generated:
        assert generated.response is not None
        assert len(generated.response.headers["x-request-id"]) == 32
