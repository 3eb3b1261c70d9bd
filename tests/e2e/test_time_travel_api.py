"""``asOf`` and ``knownAt`` through HTTP, on the embedded and the production adapters."""

from __future__ import annotations

import httpx
import pytest

from .conftest import LiveServer, assert_error, log_head, obs, settle

BACKENDS = ("embedded", "production")
T0 = 1_700_000_000.0
DAY = 86_400.0


def ingest(http: httpx.Client, server: LiveServer, *items: dict[str, object]) -> int:
    response = http.post("/v2/ingest", json={"observations": list(items)}, headers=server.headers)
    assert response.status_code == 200, response.text
    settle(http)
    return log_head(http)


def test_as_of_a_time_and_as_known_at_a_position(server: LiveServer, http: httpx.Client) -> None:
    ingest(
        http,
        server,
        obs("aave", 100.0, T0, name="Aave", category="Lending", chains=["Ethereum"]),
        obs("lido", 300.0, T0, name="Lido", category="Liquid Staking", chains=["Ethereum"]),
        obs("aave", 110.0, T0 + DAY),
    )
    before_fix = ingest(http, server, obs("lido", 50.0, T0 + DAY))
    # A late correction of lido's second day, recorded after ``before_fix``.
    ingest(http, server, obs("lido", 500.0, T0 + DAY))

    now = http.get("/v2/protocols", params={"sort": "tvl"}).json()
    assert [(p["slug"], p["tvl"]) for p in now["protocols"]] == [("lido", 500.0), ("aave", 110.0)]

    first_day = http.get("/v2/protocols", params={"asOf": T0, "sort": "tvl"}).json()
    assert [(p["slug"], p["tvl"]) for p in first_day["protocols"]] == [
        ("lido", 300.0),
        ("aave", 100.0),
    ]
    assert first_day["asOf"] == T0

    believed = http.get("/v2/protocols", params={"knownAt": before_fix, "sort": "tvl"}).json()
    assert [(p["slug"], p["tvl"]) for p in believed["protocols"]] == [
        ("aave", 110.0),
        ("lido", 50.0),
    ]
    assert believed["knownAt"] == before_fix
    lido = believed["protocols"][1]
    assert lido["change_1d"] == pytest.approx(-100 * 250 / 300)

    one = http.get("/v2/protocols/aave", params={"asOf": "2023-11-14T22:13:20Z"}).json()
    assert (one["tvl"], one["change_1d"]) == (100.0, None)
    assert http.get("/v2/protocols/aave", params={"asOf": T0 - 1}).status_code == 404
    series = http.get("/v2/protocols/lido/metrics", params={"knownAt": before_fix}).json()
    assert ([p["value"] for p in series["points"]], series["knownAt"]) == (
        [300.0, 50.0],
        before_fix,
    )
    fixed = http.get("/v2/protocols/lido/metrics").json()
    assert [p["value"] for p in fixed["points"]] == [300.0, 500.0]
    listed = http.get("/protocols", params={"asOf": T0 + DAY, "knownAt": before_fix}).json()
    assert [(p["slug"], p["tvl"]) for p in listed] == [("aave", 110.0), ("lido", 50.0)]


def test_bad_time_travel_parameters_are_refused(server: LiveServer, http: httpx.Client) -> None:
    for params in ({"asOf": "yesterday"}, {"knownAt": "-1"}, {"knownAt": "soon"}, {"as_of": 1}):
        error = assert_error(http.get("/v2/protocols", params=params), 400, "invalid_parameter")
        assert set(params) & set(str(error["details"]).split("'")), error
