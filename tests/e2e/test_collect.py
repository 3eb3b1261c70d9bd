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
from defi_realtime.domain.token import Token
from defi_realtime.entrypoints.settings import Settings

LAST_MODIFIED = "Fri, 19 Dec 2025 20:00:00 GMT"
UPSTREAM_TIME = 1_766_174_400.0  # that time, in unix seconds
PRICES = b"""{"coins": {
 "coingecko:ethereum": {"price": 2950.5, "symbol": "ETH", "timestamp": 1766174000,
                        "confidence": 0.99},
 "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48": {"price": 1.0, "timestamp": 1766173000},
 "coingecko:broken": {"symbol": "X"}
}}"""
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
            if self.path.startswith("/prices/current/"):
                self.end_headers()
                self.wfile.write(PRICES)
                return
            self.send_header("last-modified", LAST_MODIFIED)
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
    coins = "coingecko:ethereum,ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    result = subprocess.run(
        [*command, "--coins-url", url, "--coins", coins, "--polls", "2", "--interval", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # One 503, then two polls of each.
    assert requests == ["/protocols", *(["/protocols", f"/prices/current/{coins}"] * 2)]
    app = DefiRealtime(env=Settings(data_dir=tmp_path).event_store_env)
    try:
        aave = app.get_protocol("aave-v3")
        assert aave.current_value("tvl", "total") == 100.0
        # Upstream's time (Last-Modified), not the poll's: the second poll recorded nothing.
        assert aave.current[("tvl", "total")] == (100.0, UPSTREAM_TIME)
        assert sum(map(len, aave.recent.values())) == 3
        assert aave.current_value("tvl", "Ethereum") == 100.0
        # The collector keeps DeFiLlama's TVL sections as metrics of their own, outside tvl.
        assert ("tvl", "Ethereum-borrowed") not in aave.current
        assert aave.current_value("borrowed", "Ethereum") == 5.0
        assert app.get_protocol("some-cex").current == {}
        eth = app.repository.get(Token.id_for("coingecko:ethereum"))
        assert (eth.price, eth.observed_at, eth.confidence) == (2950.5, 1766174000.0, 0.99)
        usdc = app.repository.get(
            Token.id_for("ethereum:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")
        )
        assert (usdc.price, usdc.observed_at) == (1.0, 1766173000.0)
    finally:
        app.close()


async def test_the_upstream_current_tvl_reconciliation_compares_with(
    llama: tuple[str, list[str]],
) -> None:
    """What ``RECONCILE_UPSTREAM_URL`` reads: each protocol's total TVL from ``/protocols``
    (after the upstream's first 503, retried), nothing for one without a TVL."""
    from defi_realtime.adapters.defillama_http import DefiLlamaHttpSource

    url, requests = llama
    source = DefiLlamaHttpSource(url, attempts=3, backoff=0.01)
    try:
        assert await source.current_tvl() == {"aave-v3": 100.0}
    finally:
        await source.aclose()
    assert requests == ["/protocols", "/protocols"]
