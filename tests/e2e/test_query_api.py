"""``POST /v2/query`` through HTTP, on the embedded and the production adapters (the
cache in process, and in Redis)."""

from __future__ import annotations

import httpx

from .conftest import LiveServer, assert_error, obs, settle

BACKENDS = ("embedded", "production")
T0 = 1_700_006_400.0  # 00:00 UTC
DAY = 86_400.0


def ingest(http: httpx.Client, server: LiveServer, *items: dict[str, object]) -> None:
    response = http.post("/v2/ingest", json={"observations": list(items)}, headers=server.headers)
    assert response.status_code == 200, response.text
    settle(http)


def test_groups_buckets_and_a_cache_that_is_never_stale(
    server: LiveServer, http: httpx.Client
) -> None:
    ingest(
        http,
        server,
        obs("aave", 100.0, T0, name="Aave", category="Lending", chains=["Ethereum"]),
        obs("kamino", 40.0, T0, name="Kamino", category="Lending", chains=["solana"]),
        obs("orca", 20.0, T0, name="Orca", category="Dexs", chains=["Solana"]),
        obs("aave", 110.0, T0 + DAY),
    )
    body = {"groupBy": "category", "measures": [{"op": "sum"}, {"op": "max"}]}
    first = http.post("/v2/query", json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["cached"] is False
    assert [(g["key"], g["measures"]) for g in answer["groups"]] == [
        ("Lending", {"sum_tvl": 150.0, "max_tvl": 110.0}),
        ("Dexs", {"sum_tvl": 20.0, "max_tvl": 20.0}),
    ]
    again = http.post("/v2/query", json=body).json()
    assert again["cached"] is True
    assert again["groups"] == answer["groups"]
    # A new fact moves the position: the cached answer is not served for it.
    ingest(http, server, obs("orca", 25.0, T0 + DAY))
    moved = http.post("/v2/query", json=body).json()
    assert moved["cached"] is False
    assert moved["position"] > answer["position"]
    assert moved["groups"][1]["measures"] == {"sum_tvl": 25.0, "max_tvl": 25.0}

    chains = http.post(
        "/v2/query", json={"groupBy": "chain", "filters": {"chains": ["SOLANA"]}, "top": {"n": 1}}
    ).json()
    assert [(g["key"], g["measures"]) for g in chains["groups"][:-1]] == [
        ("Solana", {"sum_tvl": 65.0})
    ]
    assert [t["slug"] for t in chains["groups"][-1]["top"]] == ["kamino"]

    daily = http.post(
        "/v2/query",
        json={"groupBy": "category", "bucket": "1d", "start": T0, "end": T0 + DAY},
    ).json()
    assert [
        (b["start"], {g["key"]: g["measures"]["sum_tvl"] for g in b["groups"]})
        for b in daily["buckets"]
    ] == [(T0, {"Lending": 140.0, "Dexs": 20.0}), (T0 + DAY, {"Lending": 150.0, "Dexs": 25.0})]
    as_of = http.post("/v2/query", json={"groupBy": "category", "asOf": T0}).json()
    assert {g["key"]: g["measures"]["sum_tvl"] for g in as_of["groups"]} == {
        "Lending": 140.0,
        "Dexs": 20.0,
    }


def test_bad_queries_name_the_field(server: LiveServer, http: httpx.Client) -> None:
    for body, field in [
        ({"groupBy": "planet"}, "groupBy"),
        ({"measures": [{"op": "mode"}]}, "measures"),
        ({"measures": []}, "measures"),
        ({"top": {"n": 0}}, "top"),
        ({"filters": {"minTvl": -1}}, "filters"),
        ({"bucket": "1d"}, None),
        ({"bucket": "1h", "start": 0, "end": 2_000_000_000}, "bucket"),
        ({"asOf": "yesterday"}, "asOf"),
    ]:
        error = assert_error(http.post("/v2/query", json=body), 400, "invalid_query")
        if field is not None:
            assert field in error["message"] or (error["details"] or {}).get("field") == field, (
                body,
                error,
            )
    error = assert_error(http.post("/v2/query", json={"colour": "red"}), 400, "invalid_body")
    assert "colour" in error["message"]


def test_the_data_quality_report_flags_and_keeps(server: LiveServer, http: httpx.Client) -> None:
    ingest(
        http,
        server,
        obs("aave", 100.0, T0, name="Aave", category="Lending", chains=["Ethereum", "Base"]),
        obs("aave", 80.0, T0, chain="Ethereum"),
        obs("aave", 40.0, T0, chain="base"),
        obs("orca", 10.0, T0 - 3 * DAY, name="Orca", category="Dexs", chains=["Solana"]),
    )
    report = http.get("/v2/data-quality").json()
    assert report["counts"] == {"chains_do_not_add_up": 1, "sudden_jump": 0, "stale": 1}
    assert [(f["protocol"], f["kind"]) for f in report["findings"]] == [
        ("aave", "chains_do_not_add_up"),
        ("orca", "stale"),
    ]
    only = http.get("/v2/data-quality", params={"kind": "stale"}).json()["findings"]
    assert [f["protocol"] for f in only] == ["orca"]
    # Flagged, not dropped: the values are served as they are.
    assert http.get("/v2/protocols/aave").json()["chainTvls"] == {"Ethereum": 80.0, "Base": 40.0}
    assert_error(http.get("/v2/data-quality", params={"kind": "odd"}), 400, "invalid_parameter")
