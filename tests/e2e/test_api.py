"""End-to-end REST tests against the real server (uvicorn on a free port, embedded defaults)."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from defi_realtime.domain.protocol import SLUG_PATTERN
from defi_realtime.domain.token import TOKEN_ID_PATTERN
from defi_realtime.entrypoints.schemas.ingest import IngestResult
from tests.e2e.conftest import LiveServer, assert_error, log_head, obs, settle, wait_for

# Every test that uses `server` runs on the embedded adapters and on PostgreSQL + Redis +
# RabbitMQ (see conftest.pytest_generate_tests).
BACKENDS = ("embedded", "production")

T0 = 1_765_000_000.0  # 2025-12-06, a fixed data time keeps the numbers exact
DAY = 86_400.0


def ingest(
    http: httpx.Client, server: LiveServer, body: dict[str, Any], status: int = 200
) -> dict[str, Any]:
    response = http.post("/v2/ingest", json=body, headers=server.headers)
    assert response.status_code == status, response.text
    result: dict[str, Any] = response.json()
    if status == 200:  # the answer is exactly what the document's IngestResult says
        assert IngestResult.model_validate(result).model_dump(mode="json") == result
    return result


def protocol(http: httpx.Client, slug: str) -> dict[str, Any]:
    response = http.get(f"/v2/protocols/{slug}")
    assert response.status_code == 200, response.text
    view: dict[str, Any] = response.json()
    return view


def wait_tvl(http: httpx.Client, slug: str, tvl: float) -> dict[str, Any]:
    """Poll until the (asynchronous) hot projection shows ``tvl`` for ``slug``."""
    return wait_for(
        lambda: http.get(f"/v2/protocols/{slug}"),
        lambda r: r.status_code == 200 and r.json()["tvl"] == tvl,
    ).json()


def listed(slug: str, value: float, at: float = T0, **extra: Any) -> dict[str, Any]:
    return obs(slug, value, at, name=slug.upper(), category="Lending", chains=["Ethereum"], **extra)


# A small market: (slug, name, category, chains, total tvl, {chain: tvl}).
MARKET = [
    ("aave-v3", "Aave V3", "Lending", ["Ethereum", "Arbitrum"], 30e9, {"Ethereum": 25e9}),
    ("lido", "Lido", "Liquid Staking", ["Ethereum"], 25e9, {}),
    ("uniswap-v3", "Uniswap V3", "Dexs", ["Ethereum", "Arbitrum", "Polygon"], 5e9, {}),
    ("curve-dex", "Curve DEX", "Dexs", ["Ethereum"], 2e9, {}),
    ("gmx", "GMX", "Derivatives", ["Arbitrum"], 0.5e9, {"Arbitrum": 0.5e9}),
]


def seed_market(http: httpx.Client, server: LiveServer) -> None:
    items = []
    for slug, name, category, chains, tvl, chain_tvls in MARKET:
        items.append(obs(slug, tvl, T0, name=name, category=category, chains=chains))
        for chain, value in chain_tvls.items():
            items.append(obs(slug, value, T0, chain=chain))
    result = ingest(http, server, {"observations": items})
    assert result["accepted"] == len(items)
    settle(http)


def slugs(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["slug"] for item in response.json()["protocols"]]


# -- health, ingest -------------------------------------------------------------------------


def test_health(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["connections"] == 0
    # Only the API key made before start (its account, then the key) is in the log, and
    # the node has followed it.
    # The server's key: Account.Opened, ApiKey.Issued, its account's KeyListing (2 events).
    assert body["log_head"] == 4
    assert body["node_position"] == 4


def test_ingest_counts_accepted_then_duplicates(http: httpx.Client, server: LiveServer) -> None:
    body = {
        "observations": [
            listed("aave-v3", 1.0e10),
            obs("aave-v3", 6.0e9, T0, chain="Ethereum"),
            obs("aave-v3", 2.0e8, T0, metric="volume_24h"),
        ],
        "prices": [{"token": "coingecko:ethereum", "price": 3100.5, "observed_at": T0}],
    }
    first = ingest(http, server, body)
    assert first["accepted"] == 4
    assert first["duplicates"] == 0
    assert first["rejected"] == 0
    assert first["errors"] == []
    assert first["committed"] is True
    assert first["position"] > 1
    head = log_head(http)
    assert head == first["position"]

    second = ingest(http, server, body)
    assert (second["accepted"], second["duplicates"], second["rejected"]) == (0, 4, 0)
    assert log_head(http) == head  # an identical repeat records nothing
    # ... and answers the head, from which a client can resume a stream (it said 0).
    assert second["position"] == head

    view = wait_tvl(http, "aave-v3", 1.0e10)
    assert view["chainTvls"] == {"Ethereum": 6.0e9}
    assert view["volume_24h"] == 2.0e8


def test_ingest_accepts_iso_8601_timestamps(http: httpx.Client, server: LiveServer) -> None:
    result = ingest(
        http, server, {"observations": [listed("aave-v3", 7.0, at="2025-12-06T05:46:40Z")]}
    )
    assert result["accepted"] == 1
    assert wait_tvl(http, "aave-v3", 7.0)["updated_at"] == T0


@pytest.mark.parametrize("key", [None, "", "drt_not-a-real-key"])
def test_ingest_needs_a_valid_key(http: httpx.Client, key: str | None) -> None:
    head = log_head(http)
    headers = {} if key is None else {"X-API-Key": key}
    response = http.post(
        "/v2/ingest", json={"observations": [listed("aave-v3", 1.0)]}, headers=headers
    )
    assert_error(response, 401, "unauthorized")
    assert log_head(http) == head
    assert_error(http.get("/v2/protocols/aave-v3"), 404, "protocol_not_found")


def test_a_key_that_is_not_live_is_refused_even_on_open_reads(
    http: httpx.Client, server: LiveServer
) -> None:
    # Reads are open without a key; a key that is presented must be a live one (a client
    # with a mistyped or revoked key learns it at once, on any route, as on the WebSocket).
    assert http.get("/v2/protocols").status_code == 200
    assert http.get("/v2/protocols", headers=server.headers).status_code == 200
    bad = {"X-API-Key": "drt_not-a-real-key"}
    assert_error(http.get("/v2/protocols", headers=bad), 401, "unauthorized")
    assert_error(http.get("/v2/realtime/tvl", headers=bad), 401, "unauthorized")


def test_rejected_item_fails_the_whole_batch(http: httpx.Client, server: LiveServer) -> None:
    ingest(http, server, {"observations": [listed("aave-v3", 100.0)]})
    wait_tvl(http, "aave-v3", 100.0)
    head = log_head(http)

    response = http.post(
        "/v2/ingest",
        json={
            "observations": [
                obs("aave-v3", 200.0, T0 + 60),
                obs("aave-v3", -5.0, T0 + 120),
                listed("lido", 300.0),
                obs("never-listed", 1.0, T0),
            ],
            "prices": [
                {"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0},
                {"token": "coingecko:bitcoin", "price": 9e4, "observed_at": T0, "confidence": 2},
            ],
        },
        headers=server.headers,
    )
    error = assert_error(response, 422, "invalid_items")
    details = error["details"]
    assert details["committed"] is False
    assert (details["accepted"], details["duplicates"], details["rejected"]) == (0, 0, 2)
    reasons = {(e["kind"], e["index"]): e["reason"] for e in details["errors"]}
    assert set(reasons) == {("observation", 1), ("price", 1)}
    assert "non-negative" in reasons[("observation", 1)]
    assert "confidence" in reasons[("price", 1)]
    assert details["position"] == 0

    # Nothing changed: no event, old value, no new protocol, no price.
    assert log_head(http) == head
    assert protocol(http, "aave-v3")["tvl"] == 100.0
    assert_error(http.get("/v2/protocols/lido"), 404, "protocol_not_found")
    assert http.get("/v2/realtime/prices").json() == {"data": []}


def test_unknown_protocol_without_listing_is_rejected(
    http: httpx.Client, server: LiveServer
) -> None:
    head = log_head(http)
    response = http.post(
        "/v2/ingest",
        json={"observations": [listed("aave-v3", 1.0), obs("ghost", 5.0, T0)]},
        headers=server.headers,
    )
    error = assert_error(response, 422, "invalid_items")
    assert [(e["kind"], e["index"]) for e in error["details"]["errors"]] == [("observation", 1)]
    assert "unknown protocol 'ghost'" in error["details"]["errors"][0]["reason"]
    assert log_head(http) == head
    assert_error(http.get("/v2/protocols/aave-v3"), 404, "protocol_not_found")


def test_partial_batch_commits_the_valid_items(http: httpx.Client, server: LiveServer) -> None:
    ingest(http, server, {"observations": [listed("aave-v3", 100.0)]})
    result = ingest(
        http,
        server,
        {
            "partial": True,
            "observations": [
                obs("aave-v3", "200", T0 + 60),
                obs("aave-v3", 300.0, T0 + 120),
                obs("ghost", 5.0, T0),
            ],
            "prices": [{"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0}],
        },
    )
    assert result["committed"] is True
    assert (result["accepted"], result["duplicates"], result["rejected"]) == (2, 0, 2)
    assert sorted((e["kind"], e["index"]) for e in result["errors"]) == [
        ("observation", 0),
        ("observation", 2),
    ]
    assert result["position"] == log_head(http)
    assert wait_tvl(http, "aave-v3", 300.0)["updated_at"] == T0 + 120
    prices = wait_for(lambda: http.get("/v2/realtime/prices").json()["data"], bool)
    assert [(p["token"], p["price"]) for p in prices] == [("coingecko:ethereum", 3000.0)]
    assert_error(http.get("/v2/protocols/ghost"), 404, "protocol_not_found")


def test_late_observation_is_history_only(http: httpx.Client, server: LiveServer) -> None:
    ingest(http, server, {"observations": [listed("aave-v3", 100.0)]})
    result = ingest(http, server, {"observations": [obs("aave-v3", 50.0, T0 - 3_600)]})
    assert result["accepted"] == 1
    settle(http)
    assert protocol(http, "aave-v3")["tvl"] == 100.0
    points = http.get("/v2/protocols/aave-v3/metrics").json()["points"]
    assert points == [
        {"timestamp": T0 - 3_600, "value": 50.0},
        {"timestamp": T0, "value": 100.0},
    ]


# -- malformed input: a clear 4xx and nothing changes -----------------------------------------

GOOD = {"protocol": "aave-v3", "metric": "tvl", "chain": "total", "value": 2.0, "observed_at": T0}
GOOD_PRICE = {"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0}


def _body(**changes: Any) -> bytes:
    return json.dumps({"observations": [{**GOOD, **changes}]}).encode()


def _price(**changes: Any) -> bytes:
    return json.dumps({"prices": [{**GOOD_PRICE, **changes}]}).encode()


# (id, raw body, status, error code); ids starting "price-" reject price item 0, other
# invalid_items cases observation item 0.
MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("invalid-json", b'{"observations": [', 400, "invalid_json"),
    ("trailing-garbage", _body() + b"x", 400, "invalid_json"),
    ("not-utf8", b'{"observations": ["\xff\xfe"]}', 400, "invalid_json"),
    ("nan-literal", _body().replace(b"2.0", b"NaN"), 400, "invalid_json"),
    ("infinity-literal", _body().replace(b"2.0", b"-Infinity"), 400, "invalid_json"),
    ("deeply-nested", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    ("escaped-lone-surrogate", _body(source="\ud800"), 400, "invalid_json"),
    (
        "utf8-encoded-surrogate",
        _body(source="X").replace(b"X", b"\xed\xa0\x80"),
        400,
        "invalid_json",
    ),
    ("overflowing-float", _body().replace(b"2.0", b"1e999"), 422, "invalid_items"),
    ("overflowing-int", _body().replace(b"2.0", b"1" + b"0" * 400), 422, "invalid_items"),
    ("negative-tvl", _body(value=-1.0), 422, "invalid_items"),
    ("value-as-string", _body(value="2.0"), 422, "invalid_items"),
    ("value-as-bool", _body(value=True), 422, "invalid_items"),
    ("value-as-null", _body(value=None), 422, "invalid_items"),
    (
        "value-missing",
        json.dumps({"observations": [{"protocol": "aave-v3", "observed_at": T0}]}).encode(),
        422,
        "invalid_items",
    ),
    ("chains-as-string", _body(chains="Ethereum"), 422, "invalid_items"),
    ("chains-of-numbers", _body(chains=[1, 2]), 422, "invalid_items"),
    ("chain-as-list", _body(chain=["Ethereum"]), 422, "invalid_items"),
    ("metric-as-list", _body(metric=["tvl"]), 422, "invalid_items"),
    ("protocol-as-object", _body(protocol={"slug": "aave-v3"}), 422, "invalid_items"),
    ("name-as-number", _body(name=5), 422, "invalid_items"),
    ("source-as-list", _body(source=["x"]), 422, "invalid_items"),
    ("observed-at-as-list", _body(observed_at=[T0]), 422, "invalid_items"),
    ("observed-at-not-a-date", _body(observed_at="yesterday"), 422, "invalid_items"),
    ("observed-at-in-ms", _body(observed_at=T0 * 1000), 422, "invalid_items"),
    ("unknown-item-field", _body(tvl_usd=1.0), 422, "invalid_items"),
    ("unknown-metric", _body(metric="mcap"), 422, "invalid_items"),
    ("bad-slug", _body(protocol="Aave V3"), 422, "invalid_items"),
    ("item-not-an-object", b'{"observations": ["aave-v3"]}', 422, "invalid_items"),
    ("price-negative", _price(price=-1), 422, "invalid_items"),
    ("price-as-string", _price(price="3000"), 422, "invalid_items"),
    ("price-token-as-list", _price(token=["coingecko:ethereum"]), 422, "invalid_items"),
    ("price-confidence-above-1", _price(confidence=1.5), 422, "invalid_items"),
    ("price-confidence-as-string", _price(confidence="high"), 422, "invalid_items"),
    ("price-unknown-field", _price(volume=1), 422, "invalid_items"),
    # Characters PostgreSQL text cannot hold (NUL), terminal/log control characters, and
    # invisible ones in identifiers: refused in every string of an item, naming the field.
    ("nul-in-name", _body(name="x\u0000y"), 422, "invalid_items"),
    ("nul-in-protocol", _body(protocol="aave\u0000"), 422, "invalid_items"),
    ("nul-in-category", _body(name="Aave", category="Lend\u0000"), 422, "invalid_items"),
    ("nul-in-url", _body(name="Aave", url="https://aave.com/\u0000"), 422, "invalid_items"),
    ("nul-in-source", _body(source="llama\u0000"), 422, "invalid_items"),
    ("nul-in-chain", _body(chain="Ethereum\u0000"), 422, "invalid_items"),
    ("nul-in-chains", _body(name="Aave", chains=["Ethereum", "\u0000"]), 422, "invalid_items"),
    ("escape-in-name", _body(name="\u001b[2Jx"), 422, "invalid_items"),
    ("c1-in-name", _body(name="x\u0085y"), 422, "invalid_items"),
    ("rlo-in-chain", _body(chain="Eth\u202eereum"), 422, "invalid_items"),
    ("zero-width-in-chains", _body(name="A", chains=["Eth\u200bereum"]), 422, "invalid_items"),
    ("bell-in-slug", _body(protocol="aave\u0007"), 422, "invalid_items"),
    ("zero-width-in-slug", _body(protocol="aa\u200bve"), 422, "invalid_items"),
    ("emoji-in-slug", _body(protocol="aave-\U0001f680"), 422, "invalid_items"),
    ("dots-in-slug", _body(protocol="aave..v3"), 422, "invalid_items"),
    ("quote-in-slug", _body(protocol='aave"v3'), 422, "invalid_items"),
    ("price-nul-in-token", _price(token="coingecko:eth\u0000"), 422, "invalid_items"),
    ("price-nul-in-source", _price(source="\u0000"), 422, "invalid_items"),
    ("too-many-chains", _body(name="A", chains=["Ethereum"] * 200_000), 422, "invalid_items"),
    (
        "duplicate-key",
        b'{"observations": [{"protocol": "aave-v3", "value": -1, "value": 5, "observed_at": '
        + str(T0).encode()
        + b"}]}",
        400,
        "invalid_json",
    ),
    ("duplicate-top-level-key", b'{"observations": [], "observations": []}', 400, "invalid_json"),
    ("partial-maybe", b'{"observations": [], "partial": "maybe"}', 400, "invalid_body"),
    ("partial-as-string", b'{"observations": [], "partial": "true"}', 400, "invalid_body"),
    ("partial-as-number", b'{"observations": [], "partial": 1}', 400, "invalid_body"),
    ("partial-as-null", b'{"observations": [], "partial": null}', 400, "invalid_body"),
    ("unknown-top-level-field", b'{"observations": [], "extra": 1}', 400, "invalid_body"),
    ("observations-not-a-list", b'{"observations": {"protocol": "x"}}', 400, "invalid_body"),
    ("prices-not-a-list", b'{"prices": "coingecko:ethereum"}', 400, "invalid_body"),
    ("body-is-a-list", b"[]", 400, "invalid_body"),
    ("body-is-a-number", b"3", 400, "invalid_body"),
    ("empty-batch", b'{"observations": []}', 400, "empty_batch"),
    ("empty-object", b"{}", 400, "empty_batch"),
    ("empty-body", b"", 400, "invalid_json"),
    (
        "too-many-items",
        json.dumps({"observations": [{}] * 50_001}).encode(),
        413,
        "batch_too_large",
    ),
]


# The field each rejection must name, where the case is about one.
REJECTED_FIELD = {
    "nul-in-name": "name",
    "nul-in-protocol": "protocol",
    "nul-in-category": "category",
    "nul-in-url": "url",
    "nul-in-source": "source",
    "nul-in-chain": "chain",
    "nul-in-chains": "chains",
    "escape-in-name": "name",
    "c1-in-name": "name",
    "rlo-in-chain": "chain",
    "zero-width-in-chains": "chains",
    "bell-in-slug": "protocol",
    "zero-width-in-slug": "protocol",
    "emoji-in-slug": "protocol",
    "dots-in-slug": "protocol",
    "quote-in-slug": "protocol",
    "price-nul-in-token": "token",
    "price-nul-in-source": "source",
    "too-many-chains": "chains",
    "negative-tvl": "value",
    "value-missing": "value",
    "unknown-item-field": "tvl_usd",
}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [pytest.param(body, status, code, id=name) for name, body, status, code in MALFORMED],
)
def test_malformed_ingest_changes_nothing(
    shared_http: httpx.Client,
    shared_server: LiveServer,
    request: pytest.FixtureRequest,
    body: bytes,
    status: int,
    code: str,
) -> None:
    # One server for all cases: each must leave it exactly as it found it.
    http, server = shared_http, shared_server
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    wait_tvl(http, "aave-v3", 1.0)
    # The history projection follows on its own: wait for it too, so what is compared
    # after the malformed request is the settled state, not a projection still running.
    wait_for(
        lambda: http.get("/v2/protocols/aave-v3/metrics").json()["points"],
        lambda points: points == [{"timestamp": T0, "value": 1.0}],
    )
    head = log_head(http)

    response = http.post(
        "/v2/ingest",
        content=body,
        headers={**server.headers, "content-type": "application/json"},
    )
    error = assert_error(response, status, code)
    if code == "invalid_items":
        rejected = error["details"]["errors"]
        kind = "price" if request.node.callspec.id.startswith("price-") else "observation"
        assert [(e["kind"], e["index"]) for e in rejected] == [(kind, 0)]
        assert rejected[0]["reason"]
        case = request.node.callspec.id
        if case in REJECTED_FIELD:
            assert rejected[0]["field"] == REJECTED_FIELD[case], rejected
            assert REJECTED_FIELD[case] in rejected[0]["reason"]

    assert log_head(http) == head
    assert protocol(http, "aave-v3")["tvl"] == 1.0
    assert http.get("/v2/protocols/aave-v3/metrics").json()["points"] == [
        {"timestamp": T0, "value": 1.0}
    ]
    assert http.get("/v2/realtime/prices").json() == {"data": []}
    assert slugs(http.get("/v2/protocols")) == ["aave-v3"]


def test_duplicate_keys_are_refused_naming_the_key(
    shared_http: httpx.Client, shared_server: LiveServer
) -> None:
    http, server = shared_http, shared_server
    head = log_head(http)
    body = b'{"observations": [{"protocol": "aave-v3", "value": -1, "value": 5, "observed_at": 1}]}'
    response = http.post(
        "/v2/ingest",
        content=body,
        headers={**server.headers, "content-type": "application/json"},
    )
    error = assert_error(response, 400, "invalid_json")
    assert "duplicate key 'value'" in error["message"]
    assert error["details"] == {"key": "value"}
    assert log_head(http) == head


@pytest.mark.parametrize("value", ["maybe", "yes", "no", "", "2", "True", "on"])
def test_partial_query_parameter_is_true_false_1_or_0(
    shared_http: httpx.Client, shared_server: LiveServer, value: str
) -> None:
    http, server = shared_http, shared_server
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    head = log_head(http)
    # One valid item and one bad one: any reading of "partial" but a refusal would either
    # record the valid item (true) or answer 422 (false).
    body = {"observations": [obs("aave-v3", 2.0, T0 + 1), obs("aave-v3", -1.0, T0 + 2)]}
    response = http.post("/v2/ingest", params={"partial": value}, json=body, headers=server.headers)
    error = assert_error(response, 400, "invalid_parameter")
    assert "partial" in error["message"]
    assert log_head(http) == head


@pytest.mark.parametrize(
    ("value", "status"), [("true", 200), ("1", 200), ("false", 422), ("0", 422)]
)
def test_partial_query_parameter_values(
    shared_http: httpx.Client, shared_server: LiveServer, value: str, status: int
) -> None:
    http, server = shared_http, shared_server
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    body = {"observations": [obs("aave-v3", 1.0, T0), obs("aave-v3", -1.0, T0 + 2)]}
    response = http.post("/v2/ingest", params={"partial": value}, json=body, headers=server.headers)
    assert response.status_code == status, response.text
    twice = http.post("/v2/ingest?partial=true&partial=false", json=body, headers=server.headers)
    assert_error(twice, 400, "invalid_parameter")


def test_refused_control_characters_leave_the_history_read_model_running(
    http: httpx.Client, server: LiveServer
) -> None:
    """A NUL cannot be stored in PostgreSQL text: accepted once, it failed the history
    projection on every later batch. Refused at ingest, the model keeps following the log."""
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    settle(http)
    head = log_head(http)
    poisoned = [
        {**listed("nul-name", 1.0), "name": "x\u0000y"},
        listed("nul-chain", 1.0, chain="Ethereum\u0000"),
        listed("nul-source", 1.0, source="\u0000"),
        {**listed("nul-chains", 1.0), "chains": ["\u0000"]},
        {**listed("nul-category", 1.0), "category": "\u0000"},
        {**listed("nul-url", 1.0), "url": "\u0000"},
    ]
    for item in poisoned:
        response = http.post("/v2/ingest", json={"observations": [item]}, headers=server.headers)
        error = assert_error(response, 422, "invalid_items")
        [rejection] = error["details"]["errors"]
        assert "U+0000" in rejection["reason"], rejection
        response = http.post(
            "/v2/ingest", json={"observations": [item], "partial": True}, headers=server.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == 1
    assert log_head(http) == head

    later = ingest(http, server, {"observations": [obs("aave-v3", 2.0, T0 + 60)]})
    settle(http)  # every projection, the history read model included, reaches the head
    assert settle(http)["history_position"] == later["position"]
    points = http.get("/v2/protocols/aave-v3/metrics").json()["points"]
    assert points == [{"timestamp": T0, "value": 1.0}, {"timestamp": T0 + 60, "value": 2.0}]


def test_oversize_body_is_413_and_changes_nothing(http: httpx.Client, server: LiveServer) -> None:
    head = log_head(http)
    filler = b'{"observations": [' + b" " * (10 * 1024 * 1024) + b"]}"
    response = http.post(
        "/v2/ingest",
        content=filler,
        headers={**server.headers, "content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")

    def chunks() -> Any:  # no Content-Length: the limit holds while streaming too
        yield b'{"observations": ['
        for _ in range(10):
            yield b" " * (1024 * 1024)
        yield b"]}"

    response = http.post(
        "/v2/ingest",
        content=chunks(),
        headers={**server.headers, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    assert log_head(http) == head
    assert http.get("/health").status_code == 200  # the server is still fine


def test_client_gone_mid_upload_changes_nothing(http: httpx.Client, server: LiveServer) -> None:
    head = log_head(http)
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"POST /v2/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-API-Key: {server.api_key}\r\nContent-Length: 100000\r\n\r\n".encode()
            + b'{"observations": ['
        )
    time.sleep(0.2)  # let the server notice; the fixture fails the test on a logged error
    assert log_head(http) == head
    assert http.get("/health").status_code == 200


# -- reads ------------------------------------------------------------------------------------


def test_protocol_uses_defillama_field_names(http: httpx.Client, server: LiveServer) -> None:
    seed_market(http, server)
    view = protocol(http, "aave-v3")
    assert {"slug", "name", "category", "chains", "tvl", "chainTvls"} <= set(view)
    assert {"change_1h", "change_1d", "change_7d"} <= set(view)
    assert view["slug"] == "aave-v3"
    assert view["name"] == "Aave V3"
    assert view["category"] == "Lending"
    assert view["chains"] == ["Ethereum", "Arbitrum"]
    assert view["tvl"] == 30e9
    assert view["chainTvls"] == {"Ethereum": 25e9}
    assert (view["change_1h"], view["change_1d"], view["change_7d"]) == (None, None, None)


def test_unknown_protocol_is_404(http: httpx.Client) -> None:
    error = assert_error(http.get("/v2/protocols/no-such-protocol"), 404, "protocol_not_found")
    assert "no-such-protocol" in error["message"]
    assert error["details"] is None
    assert_error(http.get("/v2/protocols/no-such-protocol/metrics"), 404, "protocol_not_found")
    assert_error(http.get("/v2/nothing-here"), 404, "not_found")


def test_list_filters(http: httpx.Client, server: LiveServer) -> None:
    seed_market(http, server)
    assert slugs(http.get("/v2/protocols")) == ["aave-v3", "lido", "uniswap-v3", "curve-dex", "gmx"]
    # On a chain, the ranking is by the TVL there: gmx's own figure; aave-v3 (split, but
    # not onto Arbitrum) and uniswap-v3 (several chains, a total only) have none: by slug.
    assert slugs(http.get("/v2/protocols", params={"chain": "Arbitrum"})) == [
        "gmx",
        "aave-v3",
        "uniswap-v3",
    ]
    assert slugs(http.get("/v2/protocols", params={"chain": "Polygon"})) == ["uniswap-v3"]
    assert slugs(http.get("/v2/protocols", params={"category": "Dexs"})) == [
        "uniswap-v3",
        "curve-dex",
    ]
    assert slugs(http.get("/v2/protocols", params={"min_tvl": 5e9})) == [
        "aave-v3",
        "lido",
        "uniswap-v3",
    ]
    combined = http.get(
        "/v2/protocols", params={"chain": "ethereum", "category": "dexs", "min_tvl": "1e9"}
    )
    assert slugs(combined) == ["curve-dex"]  # min_tvl reads the TVL on the chain too
    assert combined.json()["total"] == 1
    assert slugs(http.get("/v2/protocols", params={"chain": "Solana"})) == []
    # A blank filter is no filter (min_tvl= was a 500: a check on the number met None).
    everything = slugs(http.get("/v2/protocols"))
    for blank in ({"min_tvl": ""}, {"chain": ""}, {"category": ""}):
        assert slugs(http.get("/v2/protocols", params=blank)) == everything, blank


def test_list_sort_and_order(http: httpx.Client, server: LiveServer) -> None:
    seed_market(http, server)
    by_tvl_asc = http.get("/v2/protocols", params={"sort": "tvl", "order": "asc"})
    assert slugs(by_tvl_asc) == ["gmx", "curve-dex", "uniswap-v3", "lido", "aave-v3"]
    by_name = http.get("/v2/protocols", params={"sort": "name", "order": "asc"})
    assert slugs(by_name) == ["aave-v3", "curve-dex", "gmx", "lido", "uniswap-v3"]
    by_name_desc = http.get("/v2/protocols", params={"sort": "name", "order": "desc"})
    assert slugs(by_name_desc) == ["uniswap-v3", "lido", "gmx", "curve-dex", "aave-v3"]
    assert_error(http.get("/v2/protocols", params={"sort": "tvl;drop"}), 400, "invalid_parameter")
    assert_error(http.get("/v2/protocols", params={"order": "up"}), 400, "invalid_parameter")
    assert_error(http.get("/v2/protocols", params={"min_tvl": "nan"}), 400, "invalid_parameter")
    assert_error(http.get("/v2/protocols", params={"min_tvl": "lots"}), 400, "invalid_parameter")
    for control in ({"chain": "Ethereum\x00"}, {"category": "Dexs\x85"}):
        assert_error(http.get("/v2/protocols", params=control), 400, "invalid_parameter")


def test_list_pagination(http: httpx.Client, server: LiveServer) -> None:
    seed_market(http, server)
    page = http.get("/v2/protocols", params={"limit": 2, "offset": 1})
    assert slugs(page) == ["lido", "uniswap-v3"]
    assert {k: page.json()[k] for k in ("total", "limit", "offset")} == {
        "total": 5,
        "limit": 2,
        "offset": 1,
    }
    last = http.get("/v2/protocols", params={"limit": 2, "offset": 4})
    assert slugs(last) == ["gmx"]
    assert last.json()["total"] == 5
    beyond = http.get("/v2/protocols", params={"limit": 2, "offset": 10})
    assert slugs(beyond) == []
    assert beyond.json()["total"] == 5
    filtered = http.get("/v2/protocols", params={"chain": "Arbitrum", "limit": 1, "offset": 1})
    assert slugs(filtered) == [
        "aave-v3"
    ]  # gmx, aave-v3, uniswap-v3 (ranked by the TVL on Arbitrum)
    assert filtered.json()["total"] == 3
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "ten"}):
        assert_error(http.get("/v2/protocols", params=params), 400, "invalid_parameter")


def test_changes_are_computed_from_earlier_observations(
    http: httpx.Client, server: LiveServer
) -> None:
    ingest(
        http,
        server,
        {
            "observations": [
                listed("aave-v3", 80.0, at=T0 - 7 * DAY),
                obs("aave-v3", 100.0, T0 - DAY - 600),  # ~24h earlier (10 min off)
                obs("aave-v3", 120.0, T0 - 3_600),
                obs("aave-v3", 150.0, T0),
            ]
        },
    )
    view = wait_tvl(http, "aave-v3", 150.0)
    assert view["change_1d"] == pytest.approx(50.0)
    assert view["change_1h"] == pytest.approx(25.0)
    assert view["change_7d"] == pytest.approx(87.5)

    # The realtime feed carries the same change.
    data = http.get("/v2/realtime/tvl", params={"protocolIds": "aave-v3"}).json()["data"]
    assert len(data) == 1
    assert data[0]["change24h"] == pytest.approx(50.0)

    # A protocol seen for the first time has no change to report.
    ingest(http, server, {"observations": [listed("lido", 10.0)]})
    lido = wait_tvl(http, "lido", 10.0)
    assert (lido["change_1h"], lido["change_1d"], lido["change_7d"]) == (None, None, None)
    by_change = http.get("/v2/protocols", params={"sort": "change_1d", "order": "asc"})
    assert slugs(by_change) == ["aave-v3", "lido"]  # None sorts last in either order


def test_metrics_time_series(http: httpx.Client, server: LiveServer) -> None:
    hour = 3_600.0
    base = T0 - T0 % DAY  # a day boundary
    values = [(base + i * hour, 100.0 + i) for i in range(48)]
    observations = [listed("aave-v3", values[0][1], at=values[0][0])]
    observations += [obs("aave-v3", v, t) for t, v in values[1:]]
    observations.append(obs("aave-v3", 7.0, base, chain="Ethereum"))
    ingest(http, server, {"observations": observations})
    wait_tvl(http, "aave-v3", 147.0)
    settle(http)

    def series(**params: Any) -> dict[str, Any]:
        response = http.get("/v2/protocols/aave-v3/metrics", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    raw = series()
    assert (raw["slug"], raw["metric"], raw["chain"], raw["bucket"], raw["as_of"]) == (
        "aave-v3",
        "tvl",
        "total",
        None,
        None,
    )
    assert [(p["timestamp"], p["value"]) for p in raw["points"]] == values

    window = series(start=base + 10 * hour, end=base + 12 * hour)
    assert [p["value"] for p in window["points"]] == [110.0, 111.0, 112.0]

    iso = series(start="2025-12-06T10:00:00Z", end="2025-12-06T12:00:00+00:00")
    assert iso["points"] == window["points"]

    daily = series(bucket="1d")
    assert daily["bucket"] == 86_400
    # Each bucket reports its last observation, stamped with the bucket start.
    assert daily["points"] == [
        {"timestamp": base, "value": 123.0},
        {"timestamp": base + DAY, "value": 147.0},
    ]
    four_hours = series(bucket="4h", start=base, end=base + 8 * hour - 1)
    assert four_hours["points"] == [
        {"timestamp": base, "value": 103.0},
        {"timestamp": base + 4 * hour, "value": 107.0},
    ]
    assert series(bucket="7200", end=base + hour)["points"] == [{"timestamp": base, "value": 101.0}]

    as_of = series(as_of=base + 5 * hour)
    assert as_of["as_of"] == base + 5 * hour
    assert as_of["points"][-1] == {"timestamp": base + 5 * hour, "value": 105.0}
    assert len(as_of["points"]) == 6

    assert series(limit=2)["points"] == [
        {"timestamp": base + 46 * hour, "value": 146.0},
        {"timestamp": base + 47 * hour, "value": 147.0},
    ]
    assert series(chain="Ethereum")["points"] == [{"timestamp": base, "value": 7.0}]
    assert series(metric="fees_24h")["points"] == []

    for params in (
        {"metric": "mcap"},
        {"bucket": "3x"},
        {"bucket": "1"},
        {"start": "yesterday"},
        {"as_of": "2025-13-01"},
        # Not a time (as_of=nan was echoed as NaN, which JSON cannot hold: a 500).
        {"as_of": "nan"},
        {"end": "inf"},
        # PostgreSQL text cannot hold NUL: this was a database error (a 500) there.
        {"chain": "Ethereum\x00"},
        {"surplus": "1"},
    ):
        response = http.get("/v2/protocols/aave-v3/metrics", params=params)
        assert_error(response, 400, "invalid_parameter")


def test_realtime_tvl_and_prices(http: httpx.Client, server: LiveServer) -> None:
    seed_market(http, server)
    ingest(
        http,
        server,
        {
            "prices": [
                {"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0 - DAY},
                {"token": "coingecko:ethereum", "price": 3300.0, "observed_at": T0},
                {
                    "token": "coingecko:bitcoin",
                    "price": 90_000.0,
                    "observed_at": T0,
                    "confidence": 0.99,
                },
            ]
        },
    )
    settle(http)

    tvl = http.get("/v2/realtime/tvl", params={"protocolIds": "gmx,lido,unknown"})
    assert tvl.status_code == 200
    data = sorted(tvl.json()["data"], key=lambda item: item["id"])
    assert [(item["id"], item["value"], item["timestamp"]) for item in data] == [
        ("gmx", 0.5e9, T0),
        ("lido", 25e9, T0),
    ]
    assert all(item["position"] > 0 for item in data)
    everything = http.get("/v2/realtime/tvl", params={"limit": 2}).json()["data"]
    assert [item["id"] for item in everything] == ["aave-v3", "lido"]

    prices = http.get("/v2/realtime/prices").json()["data"]
    by_token = {price["token"]: price for price in prices}
    assert set(by_token) == {"coingecko:ethereum", "coingecko:bitcoin"}
    eth = by_token["coingecko:ethereum"]
    assert (eth["price"], eth["timestamp"]) == (3300.0, T0)
    assert eth["change24h"] == pytest.approx(10.0)
    btc = by_token["coingecko:bitcoin"]
    assert (btc["price"], btc["confidence"]) == (90_000.0, 0.99)
    one = http.get("/v2/realtime/prices", params={"tokens": "coingecko:bitcoin"}).json()
    assert [price["token"] for price in one["data"]] == ["coingecko:bitcoin"]


def test_each_metric_keeps_its_own_data_time(http: httpx.Client, server: LiveServer) -> None:
    # A volume and a chain observed later must not make an older total TVL look fresh.
    ingest(http, server, {"observations": [listed("dated", 100.0)]})
    later = {
        "observations": [
            obs("dated", 7.0, T0 + 3_600, metric="volume_24h"),
            obs("dated", 60.0, T0 + 7_200, chain="Ethereum"),
        ]
    }
    ingest(http, server, later)
    settle(http)
    [tvl] = http.get("/v2/realtime/tvl", params={"protocolIds": "dated"}).json()["data"]
    assert tvl["timestamp"] == T0
    [volume] = http.get("/v2/realtime/volumes", params={"protocolIds": "dated"}).json()["data"]
    assert (volume["volume_24h_at"], volume["fees_24h_at"]) == (T0 + 3_600, None)
    view = http.get("/v2/protocols/dated").json()
    assert (view["tvl_at"], view["volume_24h_at"], view["updated_at"]) == (
        T0,
        T0 + 3_600,
        T0 + 7_200,
    )


# The query parameters each realtime endpoint reads: the test below checks that each one is
# read (a bad value is a 400 naming it), test_openapi_documents_the_realtime_parameters that
# each one, and nothing else, is documented.
REALTIME_PARAMETERS = {
    "/v2/realtime/tvl": ("protocolIds", "limit"),
    "/v2/realtime/volumes": ("protocolIds", "limit"),
    "/v2/realtime/prices": ("tokens", "tokenIds", "limit"),
}


# A well-formed id for each id list (a protocol slug, a token id), and the rule it follows.
VALID_ID = {"protocolIds": "gmx", "tokens": "coingecko:gmx", "tokenIds": "coingecko:gmx"}
ID_PATTERNS = {
    "protocolIds": SLUG_PATTERN,
    "tokens": TOKEN_ID_PATTERN,
    "tokenIds": TOKEN_ID_PATTERN,
}


def test_realtime_volumes_and_the_realtime_parameters(
    http: httpx.Client, server: LiveServer
) -> None:
    seed_market(http, server)
    ingest(
        http,
        server,
        {
            "observations": [
                obs("aave-v3", 1e9, T0, metric="volume_24h"),
                obs("gmx", 2e9, T0, metric="volume_24h"),
                obs("gmx", 1e6, T0, metric="fees_24h"),
            ]
        },
    )
    settle(http)

    # Without protocolIds: the largest volumes, protocols without one left out.
    top = http.get("/v2/realtime/volumes").json()["data"]
    assert [(item["id"], item["volume_24h"], item["fees_24h"]) for item in top] == [
        ("gmx", 2e9, 1e6),
        ("aave-v3", 1e9, None),
    ]
    assert [item["id"] for item in http.get("/v2/realtime/volumes?limit=1").json()["data"]] == [
        "gmx"
    ]
    # Named protocols are reported even without a volume.
    named = http.get("/v2/realtime/volumes", params={"protocolIds": "lido, gmx,"}).json()["data"]
    assert sorted((item["id"], item["volume_24h"]) for item in named) == [
        ("gmx", 2e9),
        ("lido", None),
    ]

    # Next to ids, limit does not cut the named ones.
    named = http.get("/v2/realtime/volumes", params={"protocolIds": "lido,gmx", "limit": "1"})
    assert len(named.json()["data"]) == 2

    too_many = ",".join(f"p{i}" for i in range(1001))
    bad_limits = (
        ("0", "limit must be between 1 and 1000"),
        ("1001", "limit must be between 1 and 1000"),
        ("ten", "limit must be an integer"),
    )
    for path, parameters in REALTIME_PARAMETERS.items():
        ids = [name for name in parameters if name != "limit"]
        for name in ids:
            error = assert_error(http.get(path, params={name: too_many}), 400, "invalid_parameter")
            assert error["message"] == f"{name} holds at most 1000 values", path
        # A bad limit is a 400 with or without ids, on every endpoint.
        for named_ids in ({}, *({name: VALID_ID[name]} for name in ids)):
            for limit, message in bad_limits:
                response = http.get(path, params={**named_ids, "limit": limit})
                error = assert_error(response, 400, "invalid_parameter")
                assert error["message"] == message, (path, named_ids)


# -- documentation and operations -------------------------------------------------------------


def _openapi_path(route_path: str) -> str:
    """Starlette's ``{slug:str}`` is OpenAPI's ``{slug}``."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)


def test_openapi_documents_every_http_route(http: httpx.Client, server: LiveServer) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]
    paths: dict[str, Any] = document["paths"]

    routes = [route for route in server.app.routes if isinstance(route, Route)]
    assert len(routes) >= 10
    app_paths = {_openapi_path(route.path) for route in routes}
    # Every HTTP route is documented, and nothing documented is missing from the app.
    assert app_paths == set(paths)
    # A path may be served by several routes, one per method (/v2/account: GET from the
    # keys module, DELETE from the privacy one).
    served_by_path: dict[str, set[str]] = {}
    for route in routes:
        served_by_path.setdefault(_openapi_path(route.path), set()).update(
            set(route.methods or ()) - {"HEAD"}
        )
    for path, served in served_by_path.items():
        documented = {method.upper() for method in paths[path]}
        assert served == documented, path
    for route in routes:
        for method in paths[_openapi_path(route.path)].values():
            assert "200" in method["responses"], route.path
            for status, response in method["responses"].items():
                if status.startswith("4"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (route.path, status)


def test_openapi_documents_the_realtime_parameters(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for path, names in REALTIME_PARAMETERS.items():
        operation = paths[path]["get"]
        assert "400" in operation["responses"], path
        documented = {parameter["name"]: parameter for parameter in operation["parameters"]}
        assert set(documented) == set(names), path
        assert all(parameter["in"] == "query" for parameter in documented.values()), path
        # The documented bounds are the ones served.
        limit = documented["limit"]["schema"]
        for value, status in (
            (limit["minimum"], 200),
            (limit["maximum"], 200),
            (limit["minimum"] - 1, 400),
            (limit["maximum"] + 1, 400),
        ):
            assert http.get(path, params={"limit": value}).status_code == status, (path, value)
        for name in set(names) - {"limit"}:
            schema = documented[name]["schema"]
            assert (schema["type"], documented[name]["explode"]) == ("array", False), name
            # Each id follows the documented rule (the domain's slug or token-id pattern).
            pattern = ID_PATTERNS[name]
            assert schema["items"]["pattern"] == pattern, (path, name)
            prefix = VALID_ID[name].removesuffix("gmx")
            for count, status in ((schema["maxItems"], 200), (schema["maxItems"] + 1, 400)):
                ids = ",".join(f"{prefix}p{i}" for i in range(count))
                assert all(re.fullmatch(pattern, f"{prefix}p{i}") for i in range(count))
                assert http.get(path, params={name: ids}).status_code == status, (path, name)
            # An id that breaks the rule is a 400 naming the parameter.
            error = assert_error(
                http.get(path, params={name: "Not An Id"}), 400, "invalid_parameter"
            )
            assert error["details"] == {"parameter": name}, error


def _samples(text: str) -> dict[str, float]:
    """The samples of a Prometheus text exposition, by name and labels."""
    return {
        name: float(value)
        for name, value in (
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
    }


def test_http_requests_are_counted_by_route_and_status(http: httpx.Client) -> None:
    health = 'dr_http_requests_total{route="/health",status="200"}'
    protocol = 'dr_http_requests_total{route="/v2/protocols/{slug:str}",status="404"}'
    unmatched = 'dr_http_requests_total{route="unmatched",status="404"}'
    before = _samples(http.get("/metrics").text)
    assert http.get("/health").status_code == 200
    assert http.get("/health").status_code == 200
    assert http.get("/v2/protocols/no-such-protocol").status_code == 404
    assert http.get("/no/such/path").status_code == 404
    after = _samples(http.get("/metrics").text)
    assert after[health] - before.get(health, 0.0) == 2.0
    assert after[protocol] - before.get(protocol, 0.0) == 1.0
    assert after[unmatched] - before.get(unmatched, 0.0) == 1.0


def test_prometheus_metrics(http: httpx.Client, server: LiveServer) -> None:
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    ingest(http, server, {"observations": [listed("aave-v3", 1.0)]})
    bad = {"observations": [obs("aave-v3", -1.0, T0)]}
    assert http.post("/v2/ingest", json=bad, headers=server.headers).status_code == 422
    head = settle(http)["log_head"]
    response = http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE dr_ingest_items_total counter" in text
    samples = _samples(text)
    assert samples['dr_ingest_items_total{outcome="accepted"}'] == 1.0
    assert samples['dr_ingest_items_total{outcome="duplicate"}'] == 1.0
    assert samples['dr_ingest_items_total{outcome="rejected"}'] == 1.0
    assert samples["dr_websocket_connections"] == 0.0
    assert samples["dr_log_position"] == head
