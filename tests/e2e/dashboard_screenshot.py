"""Take the dashboard's screenshot (docs/img/dashboard.png) with the e2e machinery.

    .venv/bin/python -m tests.e2e.dashboard_screenshot docs/img/dashboard.png

A real server (``start_server``) over a fresh store, fed over ``POST /v2/ingest`` with the
largest protocols of the real DeFiLlama captures in ``../shared/data/defillama/`` (all 9
captures of each, so the change columns are real), an alert rule that then fires, and
Debian's chromium driven by Playwright, as in ``test_dashboard.py``. Not a test: run by
hand when the page changes.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import obs, settle, start_server

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "defillama"
SNAPSHOTS = DATA / "protocol-snapshots.jsonl.gz"
CHROMIUM = "/usr/bin/chromium"
PROTOCOLS = 25


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def real_observations(path: Path, count: int) -> list[dict[str, Any]]:
    """Every capture of the ``count`` largest protocols of the last capture."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with gzip.open(path, "rt") as lines:
        for line in lines:
            row = json.loads(line)
            if row["tvl"] is not None and row["chains"]:
                rows[row["captured_at"]].append(row)
    captures = sorted(rows, key=datetime.fromisoformat)
    latest = sorted(rows[captures[-1]], key=lambda row: -row["tvl"])[:count]
    names = {row["name"] for row in latest}
    items = []
    for captured_at in captures:
        at = datetime.fromisoformat(captured_at).timestamp()
        for row in rows[captured_at]:
            if row["name"] in names:
                listing = {key: row[key] for key in ("name", "category", "chains")}
                items.append(obs(_slug(row["name"]), row["tvl"], at, **listing))
    return items


def main(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    items = real_observations(SNAPSHOTS, PROTOCOLS)
    last = max(item["observed_at"] for item in items)
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_server(Path(tmp) / "data") as server,
        httpx.Client(base_url=server.base_url, headers=server.headers, timeout=30) as http,
    ):
        response = http.post("/v2/ingest", json={"observations": items})
        assert response.status_code == 200, response.text
        rule = {
            "name": "Lido below $25B",
            "target": {"protocol": "lido"},
            "condition": {"kind": "threshold", "direction": "below", "value": 25e9},
            "channels": [{"kind": "websocket"}],
            "cooldown": 0,
        }
        assert http.post("/v2/alerts", json=rule).status_code == 200
        settle(http)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{server.base_url}/")
            page.fill("#api-key", server.api_key)
            page.click("#use-key")
            page.wait_for_selector('#feed-status[data-state="live"]')
            expect(page.locator("#alert-rules tbody tr")).to_have_count(1)
            # A live drop: the row moves, the rule fires.
            drop = {"observations": [obs("lido", 24.1e9, last + 600)]}
            assert http.post("/v2/ingest", json=drop).status_code == 200
            expect(page.locator("#alert-firings li")).to_have_count(1)
            time.sleep(1.5)  # the resync brings the 1h column; the flash fades
            page.screenshot(path=str(out), full_page=False)
            browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
