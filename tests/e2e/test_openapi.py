"""The served document against the served behaviour, operation by operation."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import assert_error


def test_an_unsupported_method_says_which_are_allowed(shared_http: httpx.Client) -> None:
    response = shared_http.patch("/v2/alerts")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
