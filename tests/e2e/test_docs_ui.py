"""``/docs`` (Swagger UI from the installed package, nothing from another host) and CORS
(``CORS_ALLOW_ORIGINS``), against the real server; and ``/docs`` in a real Chromium."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import LiveServer, start_server

ALLOWED = "https://dashboard.example"
OTHER = "https://elsewhere.example"
CHROMIUM = "/usr/bin/chromium"
# Chromium's own traffic (updates, sync, field trials) off: every request stays on loopback.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ON_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)


def test_the_docs_page_and_its_assets_come_from_this_server(
    http: httpx.Client,
) -> None:
    page = http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "://" not in page.text  # no URL with a host: every reference is this server's
    linked = references(page.text)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/init.js"} <= set(linked)
    assert "<script>" not in page.text  # no inline script (the CSP would refuse it)

    for path in linked:
        asset = http.get(path)
        assert asset.status_code == 200, path
        assert len(asset.content) > 0, path
    css = http.get("/docs/assets/swagger-ui.css")
    assert css.headers["content-type"].startswith("text/css")
    # What a stylesheet would load by itself: data: URIs only.
    for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", css.text):
        assert url.startswith("data:"), url
    init = http.get("/docs/assets/init.js")
    assert init.headers["content-type"].startswith("text/javascript")
    assert 'url: "/openapi.json"' in init.text
    assert "validatorUrl: null" in init.text  # the badge would send the document away
    assert "://" not in init.text
    assert http.get("/docs/assets/no-such-file.js").status_code == 404


def test_the_openapi_document_lists_the_docs_page(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    docs = document["paths"]["/docs"]["get"]
    assert "text/html; charset=utf-8" in docs["responses"]["200"]["content"]


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("cors") / "data"
    with start_server(data, cors_allow_origins=f"{ALLOWED}, https://second.example") as live:
        yield live


def preflight(base_url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base_url}/v2/ingest",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, content-type",
        },
        timeout=10.0,
    )


def test_cors_preflight_is_allowed_for_a_configured_origin(cors_server: LiveServer) -> None:
    answer = preflight(cors_server.base_url, ALLOWED)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed_headers = answer.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed_headers
    assert "access-control-allow-credentials" not in answer.headers
    # And the actual request carries the header the browser needs to read the answer.
    read = httpx.get(
        f"{cors_server.base_url}/v2/protocols", headers={"Origin": ALLOWED}, timeout=10.0
    )
    assert read.status_code == 200
    assert read.headers["access-control-allow-origin"] == ALLOWED


def test_cors_preflight_is_refused_for_another_origin(cors_server: LiveServer) -> None:
    answer = preflight(cors_server.base_url, OTHER)
    assert answer.status_code == 400
    assert "access-control-allow-origin" not in answer.headers
    read = httpx.get(
        f"{cors_server.base_url}/v2/protocols", headers={"Origin": OTHER}, timeout=10.0
    )
    assert "access-control-allow-origin" not in read.headers


def test_cors_is_off_by_default(server: LiveServer) -> None:
    answer = preflight(server.base_url, ALLOWED)
    assert "access-control-allow-origin" not in answer.headers
    read = httpx.get(f"{server.base_url}/v2/protocols", headers={"Origin": ALLOWED}, timeout=10)
    assert "access-control-allow-origin" not in read.headers


def chromium() -> str:
    """The system's Chromium and Playwright, or skip (locally) / fail (CI)."""
    problem = None
    if shutil.which(CHROMIUM) is None:
        problem = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (the dev extra)"
    if problem is None:
        return CHROMIUM
    if ON_CI:
        pytest.fail(f"{problem} (CI=true: browser tests must not be skipped)")
    pytest.skip(problem)


def test_swagger_ui_renders_every_operation_in_chromium(
    server: LiveServer, http: httpx.Client, tmp_path: Path
) -> None:
    executable = chromium()
    from playwright.sync_api import sync_playwright

    operations = http.get("/openapi.json").json()["paths"]
    expected = sum(
        1 for methods in operations.values() for method in methods if method != "parameters"
    )
    origin = urlsplit(server.base_url).netloc
    requested: list[str] = []
    problems: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, headless=True, args=QUIET)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.on("request", lambda request: requested.append(request.url))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.goto(f"{server.base_url}/docs")
            page.wait_for_selector(".opblock", state="attached")
            title = page.locator(".info .title").inner_text()
            rendered = page.locator(".opblock").count()
        finally:
            browser.close()

    assert "defi-realtime" in title.lower()
    assert rendered == expected
    assert problems == []  # no script error, no CSP violation
    assert requested, "the browser requested nothing"
    elsewhere = [url for url in requested if urlsplit(url).netloc not in (origin, "")]
    assert elsewhere == [], "the docs page loaded from another host"
    assert f"{server.base_url}/openapi.json" in requested
