"""`defi-realtime collect` against a local DeFiLlama-compatible API."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from defi_realtime.application.app import DefiRealtime
from defi_realtime.entrypoints.settings import Settings

PROTOCOLS = b"""[
 {"name": "Aave V3", "slug": "aave-v3", "category": "Lending", "chains": ["Ethereum"],
  "tvl": 100.0, "chainTvls": {"Ethereum": 100.0, "Ethereum-borrowed": 5.0}, "url": "u"},
 {"name": "Some CEX", "slug": "some-cex", "category": "CEX", "chains": [], "tvl": null}
]"""


@pytest.fixture
def llama() -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    failures = {"left": 1}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if failures["left"]:
                # The first request fails with a 503: the poller must retry, not give up.
                failures["left"] -= 1
                self.send_response(503)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(PROTOCOLS)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_collect_polls_and_ingests(tmp_path: Path, llama: tuple[str, list[str]]) -> None:
    url, requests = llama
    env = {**os.environ, "DATA_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "defi_realtime.entrypoints.cli", "collect", "--url", url]
    result = subprocess.run(
        [*command, "--polls", "2", "--interval", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert requests == ["/protocols"] * 3  # one 503, then two polls
    app = DefiRealtime(env=Settings(data_dir=tmp_path).event_store_env)
    try:
        aave = app.get_protocol("aave-v3")
        assert aave.current_value("tvl", "total") == 100.0
        assert aave.current_value("tvl", "Ethereum") == 100.0
        assert ("tvl", "Ethereum-borrowed") not in aave.current
        assert app.get_protocol("some-cex").current == {}
    finally:
        app.close()
