"""The dashboard at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by
Playwright): it loads cleanly under its Content-Security-Policy, shows ingested
observations live, filters, draws a protocol's history and, with a key, lists the
account's alert rules and their firings.

Chromium is the system's (``/usr/bin/chromium``, ``apt-get install chromium``): Playwright's
own browser download is never used. Locally a missing browser skips these tests; under
``CI=true`` it fails them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    LiveServer,
    assert_error,
    obs,
    settle,
    start_server,
    wait_for,
)

CLI = str(Path(sys.executable).with_name("defi-realtime"))
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
DAY = 86_400.0
# Every wait in the browser is bounded: a stuck page fails within this, not at the suite's
# timeout.
WAIT_MS = 5_000
LIVE_WITHIN_S = 1.0
MARKUP = '<img src="/x" onerror="window.injected = 1">'

pytestmark = pytest.mark.timeout(120)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{reason} (CI=true: browser tests must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (each test gets its own context)."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the module; each test ingests protocols of its own."""
    with start_server(tmp_path_factory.mktemp("dashboard") / "data") as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0, headers=server.headers) as client:
        yield client


@contextlib.contextmanager
def watched_page(browser: Any, allowed: str | None = None) -> Iterator[Any]:
    """A fresh page (own context: own sessionStorage) that must see no problem at all, but
    for those matching ``allowed``: console errors, uncaught exceptions, failed requests
    and error answers."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    problems: list[str] = []

    def problem(text: str) -> None:
        if allowed is None or not re.search(allowed, text):
            problems.append(text)

    tab.on("console", lambda message: message.type == "error" and problem(message.text))
    tab.on("pageerror", lambda error: problem(f"page error: {error}"))
    tab.on("requestfailed", lambda request: problem(f"failed: {request.url} {request.failure}"))
    tab.on(
        "response",
        lambda response: response.status >= 400 and problem(f"{response.status}: {response.url}"),
    )
    try:
        yield tab
    finally:
        context.close()
    assert problems == [], problems


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    with watched_page(browser) as tab:
        yield tab


def ingest(http: httpx.Client, *items: dict[str, Any]) -> None:
    response = http.post("/v2/ingest", json={"observations": list(items)})
    assert response.status_code == 200, response.text


def open_dashboard(page: Any, server: LiveServer, hash_: str = "") -> Any:
    """Load ``/`` and wait until the feed is live and the table has had its listing."""
    response = page.goto(f"{server.base_url}/{hash_}")
    assert response is not None
    assert response.status == 200
    page.wait_for_selector('#feed-status[data-state="live"]')
    return response


def quiet(page: Any) -> None:
    """Wait until no re-read of the listing is due or under way (before a server stops)."""
    page.wait_for_selector("#overview:not([data-syncing])", state="attached")


def row(page: Any, slug: str) -> Any:
    return page.locator(f'#protocols tbody tr[data-slug="{slug}"]')


def test_page_loads_cleanly_under_its_csp(
    page: Any, server: LiveServer, http: httpx.Client
) -> None:
    now = time.time()
    ingest(
        http,
        obs(
            "clean-lend", 2e9, now - DAY, name="Clean Lend", category="Lending", chains=["Ethereum"]
        ),
        obs("clean-lend", 2.2e9, now),
        obs("markup-lend", 1e6, now, name=MARKUP, category="<i>Lending</i>"),
    )
    settle(http)
    response = open_dashboard(page, server)
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    cells = row(page, "clean-lend").locator("td")
    from playwright.sync_api import expect

    expect(cells.nth(1)).to_have_text("Clean Lend")
    expect(row(page, "clean-lend").locator(".tvl")).to_have_text("$2.20B")
    expect(row(page, "clean-lend").locator(".change-1d")).to_have_text("+10.00%")
    expect(page.locator("#chain-breakdown li[data-key='Ethereum']")).to_be_visible()
    expect(page.locator("#category-breakdown li[data-key='Lending']")).to_be_visible()
    # Names are text, never markup.
    expect(row(page, "markup-lend").locator("a")).to_have_text(MARKUP)
    expect(row(page, "markup-lend").locator(".category")).to_have_text("<i>Lending</i>")
    assert page.locator("#protocols img, #protocols i").count() == 0
    assert page.evaluate("window.injected") is None
    # Everything came from this server: no request left it.
    hosts = page.evaluate(
        "performance.getEntriesByType('resource').map((entry) => new URL(entry.name).host)"
    )
    assert set(hosts) <= {server.base_url.removeprefix("http://")}, hosts


def test_an_ingested_observation_appears_within_a_second(
    page: Any, server: LiveServer, http: httpx.Client
) -> None:
    from playwright.sync_api import expect

    now = time.time()
    ingest(http, obs("live-dex", 1e9, now - 60, name="Live Dex", category="Dexs"))
    settle(http)
    open_dashboard(page, server)
    tvl = row(page, "live-dex").locator(".tvl")
    expect(tvl).to_have_text("$1.00B")
    page.evaluate("document.querySelector('#protocols tr[data-slug=\"live-dex\"]').id = 'kept'")

    # An update of a shown protocol changes its row in place...
    started = time.monotonic()
    ingest(http, obs("live-dex", 1.5e9, now))
    expect(tvl).to_have_text("$1.50B", timeout=LIVE_WITHIN_S * 1000)
    assert time.monotonic() - started < LIVE_WITHIN_S
    assert row(page, "live-dex").get_attribute("id") == "kept"  # the same <tr>, updated

    # ...and a new protocol gets a row, with its listing soon after.
    started = time.monotonic()
    ingest(http, obs("brand-new-dex", 3e9, now, name="Brand New", category="Dexs"))
    expect(row(page, "brand-new-dex").locator(".tvl")).to_have_text(
        "$3.00B", timeout=LIVE_WITHIN_S * 1000
    )
    assert time.monotonic() - started < LIVE_WITHIN_S
    expect(row(page, "brand-new-dex").locator("td").nth(1)).to_have_text("Brand New")
    expect(row(page, "brand-new-dex").locator(".category")).to_have_text("Dexs")


def test_filters_by_chain_and_category(page: Any, server: LiveServer, http: httpx.Client) -> None:
    from playwright.sync_api import expect

    now = time.time()
    ingest(
        http,
        obs("flt-eth-lend", 5e8, now, name="Eth Lend", category="FltLending", chains=["Ethereum"]),
        obs("flt-sol-dex", 4e8, now, name="Sol Dex", category="FltDex", chains=["Solana"]),
        obs(
            "flt-both-dex",
            6e8,
            now,
            name="Both Dex",
            category="FltDex",
            chains=["Ethereum", "Solana"],
        ),
        obs("flt-both-dex", 2e8, now, chain="Solana"),
        obs("flt-both-dex", 4e8, now, chain="Ethereum"),
    )
    settle(http)
    open_dashboard(page, server)
    expect(row(page, "flt-sol-dex")).to_be_visible()

    page.select_option("#category-filter", "FltDex")
    expect(row(page, "flt-eth-lend")).to_have_count(0)
    expect(row(page, "flt-sol-dex")).to_be_visible()
    expect(row(page, "flt-both-dex")).to_be_visible()
    categories = page.locator("#protocols tbody .category").all_text_contents()
    assert set(categories) == {"FltDex"}, categories

    page.select_option("#chain-filter", "Solana")
    expect(row(page, "flt-both-dex").locator(".chain-tvl")).to_have_text("$200.00M")
    expect(row(page, "flt-sol-dex").locator(".chain-tvl")).to_have_text("$400.00M")
    expect(page.locator("#protocols thead .chain-tvl")).to_be_visible()
    assert page.locator("#protocols tbody tr").count() == 2
    # Ranked by the TVL on the chain: Sol Dex (400M there) before Both Dex (200M there).
    slugs = page.eval_on_selector_all(
        "#protocols tbody tr", "rows => rows.map(r => r.dataset.slug)"
    )
    assert slugs == ["flt-sol-dex", "flt-both-dex"]

    # Live updates follow the filters: one on Solana shows; the Ethereum-only lender does not.
    ingest(
        http, obs("flt-eth-lend", 9e8, now + 1), obs("flt-both-dex", 5e8, now + 1, chain="Solana")
    )
    expect(row(page, "flt-both-dex").locator(".chain-tvl")).to_have_text("$500.00M")
    expect(row(page, "flt-eth-lend")).to_have_count(0)

    page.select_option("#category-filter", "")
    page.select_option("#chain-filter", "")
    expect(row(page, "flt-eth-lend").locator(".tvl")).to_have_text("$900.00M")
    expect(page.locator("#protocols thead .chain-tvl")).to_be_hidden()


def test_protocol_page_shows_history_and_live_value(
    page: Any, server: LiveServer, http: httpx.Client
) -> None:
    from playwright.sync_api import expect

    now = time.time()
    history = [obs("chart-lend", (1 + i / 10) * 1e9, now - (5 - i) * DAY) for i in range(5)]
    history[0].update(name="Chart Lend", category="Lending", chains=["Ethereum", "Arbitrum"])
    ingest(http, *history, obs("chart-lend", 3e8, now - DAY, chain="Arbitrum"))
    settle(http)
    open_dashboard(page, server)
    row(page, "chart-lend").get_by_role("link", name="Chart Lend").click()
    assert page.url.endswith("#/protocol/chart-lend")
    expect(page.locator("#protocol-name")).to_have_text("Chart Lend")
    expect(page.locator("#protocols")).to_be_hidden()
    chart = page.locator("#protocol-chart svg")
    expect(chart).to_have_attribute("data-points", "5")
    assert page.locator("#protocol-chart path.line").count() == 1
    expect(page.locator("#protocol-tvl")).to_have_text("$1.40B")
    # The changes as the API has them (1.3B a day before the last point, 1.0B four days
    # before: the 7d change takes the oldest point of the window).
    listed = http.get("/v2/protocols/chart-lend").json()
    assert listed["change_1d"] == pytest.approx(7.6923, abs=1e-3)
    assert listed["change_7d"] == pytest.approx(40.0)
    expect(page.locator("#protocol-change-1d")).to_have_text("+7.69% 1d")
    expect(page.locator("#protocol-change-7d")).to_have_text("+40.00% 7d")
    expect(page.locator("#protocol-change-1h")).to_have_text("")
    expect(page.locator('#protocol-chains tr[data-chain="Arbitrum"] td.num')).to_have_text(
        "$300.00M"
    )

    ingest(http, obs("chart-lend", 2e9, now))
    expect(page.locator("#protocol-tvl")).to_have_text("$2.00B", timeout=LIVE_WITHIN_S * 1000)
    expect(chart).to_have_attribute("data-points", "6")

    page.get_by_role("link", name="all protocols").click()
    expect(row(page, "chart-lend").locator(".tvl")).to_have_text("$2.00B")


def test_alert_rules_and_live_firings_with_a_key(
    page: Any, server: LiveServer, http: httpx.Client
) -> None:
    from playwright.sync_api import expect

    now = time.time()
    ingest(http, obs("alarm-lend", 2e9, now - 60, name="Alarm Lend", category="Lending"))
    settle(http)
    rule = {
        "name": "alarm below 1B",
        "target": {"protocol": "alarm-lend"},
        "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
        "channels": [{"kind": "websocket"}],
        "cooldown": 0,
    }
    response = http.post("/v2/alerts", json=rule)
    assert response.status_code == 200, response.text
    rule_id = response.json()["id"]

    open_dashboard(page, server)
    expect(page.locator("#alerts")).to_be_hidden()
    page.fill("#api-key", server.api_key)
    page.click("#use-key")
    expect(page.locator("#alerts")).to_be_visible()
    listed = page.locator(f'#alert-rules tr[data-alert-id="{rule_id}"]')
    expect(listed.locator("td").first).to_have_text("alarm below 1B")
    expect(listed.locator(".firing")).to_have_text("resolved")
    # The key stays in this tab only, and the socket was opened again with it.
    assert page.evaluate("sessionStorage.getItem('defi-realtime.apiKey')") == server.api_key
    assert page.evaluate("localStorage.length") == 0
    page.wait_for_selector('#feed-status[data-state="live"]')

    ingest(http, obs("alarm-lend", 5e8, now))
    firing = page.locator(f'#alert-firings li[data-alert-id="{rule_id}"][data-condition="firing"]')
    expect(firing).to_contain_text("alarm below 1B")
    expect(listed.locator(".firing")).to_have_text("firing")

    # A reload keeps the key (same tab) and shows the rule again.
    page.reload()
    expect(page.locator(f'#alert-rules tr[data-alert-id="{rule_id}"] .firing')).to_have_text(
        "firing"
    )
    page.click("#forget-key")
    expect(page.locator("#alerts")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_the_feed_resumes_after_a_drop_with_since(browser: Any, tmp_path: Path) -> None:
    """The server goes away; an observation is recorded meanwhile (by the CLI, into the same
    store); the server comes back on the same port: the page reconnects, subscribes again
    with ``since`` its last position, and shows the update it missed."""
    from playwright.sync_api import expect

    data_dir, now = tmp_path / "data", time.time()
    sent: list[dict[str, Any]] = []
    # While a server is down the page's reconnection attempts are refused.
    refused = r"WebSocket connection to .* failed"
    with watched_page(browser, allowed=refused) as tab:
        tab.on(
            "websocket",
            lambda socket: socket.on("framesent", lambda payload: sent.append(json.loads(payload))),
        )

        with start_server(data_dir) as first, httpx.Client(base_url=first.base_url) as http:
            port, key = int(first.base_url.rsplit(":", 1)[1]), first.api_key
            response = http.post(
                "/v2/ingest",
                json={"observations": [obs("resume-lend", 1e9, now - 60, name="Resume Lend")]},
                headers=first.headers,
            )
            assert response.status_code == 200, response.text
            settle(http)
            open_dashboard(tab, first)
            expect(row(tab, "resume-lend").locator(".tvl")).to_have_text("$1.00B")
            first_subscribe = next(f for f in sent if f["type"] == "subscribe")
            assert first_subscribe["snapshot"] is True
            assert "since" not in first_subscribe
            quiet(tab)
        expect(tab.locator("#feed-status")).to_have_attribute("data-state", "reconnecting")

        missed = tmp_path / "missed.jsonl"
        missed.write_text(json.dumps(obs("resume-lend", 2.5e9, now)) + "\n")
        done = subprocess.run(
            [CLI, "ingest", str(missed)],
            env={**os.environ, "DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        sent.clear()

        with start_server(data_dir, api_key=key, port=port):
            # The retry backoff is at most 8 s between attempts.
            expect(row(tab, "resume-lend").locator(".tvl")).to_have_text("$2.50B", timeout=15_000)
            resumed = [f for f in sent if f["type"] == "subscribe" and f["channel"] == "protocols"]
            assert resumed, sent
            assert isinstance(resumed[0]["since"], int)
            assert "snapshot" not in resumed[0]
            quiet(tab)


def test_a_server_that_requires_a_key_for_reads(browser: Any, tmp_path: Path) -> None:
    """``REQUIRE_KEY_FOR_READS``: the page itself is open, says it needs a key, and with
    one reads over REST (``X-API-Key``) and the socket (``?token=``: a session token
    minted from the key; the key itself never goes in a URL)."""
    from playwright.sync_api import expect

    # The anonymous reads are refused (401, and the socket's handshake) until a key is in.
    allowed = r"401|WebSocket connection to .* failed"
    with (
        start_server(tmp_path / "data", require_key_for_reads=True) as locked,
        httpx.Client(base_url=locked.base_url, headers=locked.headers) as http,
        watched_page(browser, allowed=allowed) as tab,
    ):
        ingest(http, obs("locked-lend", 7e8, time.time(), name="Locked Lend"))
        settle(http)
        sockets: list[str] = []
        tab.on("websocket", lambda socket: sockets.append(socket.url))
        tab.goto(f"{locked.base_url}/")
        expect(tab.locator("#key-status")).to_have_text("this server needs an API key to read")
        expect(row(tab, "locked-lend")).to_have_count(0)
        tab.fill("#api-key", locked.api_key)
        tab.click("#use-key")
        expect(row(tab, "locked-lend").locator(".tvl")).to_have_text("$700.00M")
        tab.wait_for_selector('#feed-status[data-state="live"]')
        ingest(http, obs("locked-lend", 8e8, time.time()))
        expect(row(tab, "locked-lend").locator(".tvl")).to_have_text(
            "$800.00M", timeout=LIVE_WITHIN_S * 1000
        )
        assert any("?token=" in url for url in sockets), sockets
        assert not any(locked.api_key in url or "api_key" in url for url in sockets), sockets


def test_the_page_and_its_assets_are_served_with_their_headers(http: httpx.Client) -> None:
    """No browser needed: what the server hands out, and what it refuses."""
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/dashboard/app.js">' in page.text
    # Nothing external: no URL with a scheme in the page.
    assert "http://" not in page.text
    assert "https://" not in page.text
    for asset, media_type in (
        ("app.js", "javascript"),
        ("feed.js", "javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ):
        response = http.get(f"/dashboard/{asset}")
        assert response.status_code == 200, asset
        assert media_type in response.headers["content-type"], asset
        assert "default-src 'none'" in response.headers["content-security-policy"], asset
        assert response.headers["x-content-type-options"] == "nosniff", asset
    assert http.head("/").status_code == 200
    assert_error(http.get("/dashboard/nothing.js"), 404, "not_found")
    assert_error(http.get("/dashboard/../dashboard.py"), 404, "not_found")
    assert_error(http.get("/", params={"x": "1"}), 400, "invalid_parameter")
    documented = http.get("/openapi.json").json()["paths"]["/"]["get"]
    assert documented["operationId"] == "getDashboard"
    assert "text/html" in documented["responses"]["200"]["content"]


def test_a_refused_key_is_dropped(browser: Any, server: LiveServer, http: httpx.Client) -> None:
    """A key the server does not know: the page says so, forgets it and goes on without."""
    from playwright.sync_api import expect

    ingest(http, obs("anon-lend", 3e8, time.time(), name="Anon Lend"))
    settle(http)
    # The refusals themselves: 401 on REST, the socket's handshake.
    with watched_page(browser, allowed=r"401|WebSocket connection to .* failed") as tab:
        open_dashboard(tab, server)
        tab.fill("#api-key", "not-a-key")
        tab.click("#use-key")
        expect(tab.locator("#key-status")).to_have_text("key refused")
        expect(tab.locator("#alerts")).to_be_hidden()
        assert tab.evaluate("sessionStorage.length") == 0
        tab.wait_for_selector('#feed-status[data-state="live"]')
        ingest(http, obs("anon-lend", 4e8, time.time()))
        expect(row(tab, "anon-lend").locator(".tvl")).to_have_text("$400.00M")
        # One socket left open: the refused one is not retried beside the new one.
        wait_for(lambda: http.get("/health").json()["connections"], lambda n: n == 1)
        time.sleep(1.0)  # past the first retry delay (0.5 s)
        assert http.get("/health").json()["connections"] == 1
