"""The served document against the served behaviour, operation by operation."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.e2e.conftest import LiveServer, assert_error


def _example_path(path: str) -> str:
    # Any well-formed value: the request must be refused before it is looked up.
    return re.sub(r"\{rule_id\}", "00000000-0000-4000-8000-000000000000", path).replace(
        "{slug}", "aave-v3"
    )


def test_every_operation_refuses_an_unknown_query_parameter(
    shared_http: httpx.Client, shared_server: LiveServer
) -> None:
    document: dict[str, Any] = shared_http.get("/openapi.json").json()
    checked = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            documented = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "query"}
            assert "surplus" not in documented
            response = shared_http.request(
                method,
                _example_path(path),
                params={"surplus": "1", "extra": ""},
                headers=shared_server.headers,
            )
            error = assert_error(response, 400, "invalid_parameter")
            assert error["message"] == "unknown query parameter(s): extra, surplus", path
            assert error["details"] == {"parameters": ["extra", "surplus"]}
            checked += 1
    assert checked >= 19


def test_an_unsupported_method_says_which_are_allowed(shared_http: httpx.Client) -> None:
    response = shared_http.patch("/v2/alerts")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
