"""``/v2/protocols/{slug}/analytics`` and ``/v2/analytics/risk`` through HTTP, on the
embedded and the production adapters: a small fixture with known drawdowns, chain shares,
category ranks and oracles; the score recomputed from its components."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest

from .conftest import LiveServer, assert_error, log_head, obs, settle

BACKENDS = ("embedded", "production")
T0 = 1_761_955_200.0  # 2025-11-01 00:00 UTC
DAY = 86_400.0
HOUR = 3_600.0
# lend-a's daily closes: flat at 100, a peak of 200 on day 10, a trough of 50 on day 15,
# back to 150 by day 39.
LEND_A = (
    [100.0] * 10
    + [200.0, 180.0, 120.0, 90.0, 60.0, 50.0]
    + [50.0 + 100.0 * (day - 15) / 24 for day in range(16, 40)]
)


def ingest(http: httpx.Client, server: LiveServer, body: dict[str, Any]) -> int:
    response = http.post("/v2/ingest", json=body, headers=server.headers)
    assert response.status_code == 200, response.text
    settle(http)
    return log_head(http)


def recomputed(risk: dict[str, Any]) -> float:
    """The score from its components alone, as docs/analytics.md says to."""
    components = risk["components"]
    available = math.fsum(c["weight"] for c in components if c["available"])
    total = 0.0
    for component in components:
        if not component["available"]:
            assert component["normalised"] is None
            assert component["contribution"] == 0.0
            continue
        effective = component["weight"] / available
        assert component["effective_weight"] == pytest.approx(effective, rel=1e-12)
        assert 0.0 <= component["normalised"] <= 1.0
        assert component["contribution"] == pytest.approx(
            100.0 * effective * component["normalised"], rel=1e-12, abs=1e-12
        )
        assert component["explanation"]
        total += component["contribution"]
    assert math.fsum(c["weight"] for c in components) == pytest.approx(1.0)
    assert risk["coverage"] == pytest.approx(available)
    return total


def test_analytics_and_risk_list(server: LiveServer, http: httpx.Client) -> None:
    observations = [
        obs(
            "lend-a",
            value,
            T0 + day * DAY + HOUR,
            name="Lend A",
            category="Lending",
            chains=["Ethereum", "Arbitrum"],
            oracles=["Chainlink"],
        )
        for day, value in enumerate(LEND_A)
    ]
    last = T0 + 39 * DAY + HOUR
    observations += [
        obs("lend-a", 112.5, last, chain="Ethereum"),
        obs("lend-a", 37.5, last, chain="Arbitrum"),
        # A section never counts in the chain shares (ADR 0032).
        obs("lend-a", 1_000.0, last, chain="Ethereum", metric="borrowed"),
        obs(
            "lend-b",
            1_000.0,
            last - DAY,
            name="Lend B",
            category="Lending",
            chains=["Solana"],
            oracles=["Pyth", "Switchboard"],
        ),
        obs("lend-b", 1_050.0, last),
        obs("dex-c", 10.0, last, name="Dex C", category="Dexes", chains=["Base"]),
    ]
    ingest(http, server, {"observations": observations})

    # The listing keeps DeFiLlama's oracles, on our API and on DeFiLlama's.
    assert http.get("/v2/protocols/lend-b").json()["oracles"] == ["Pyth", "Switchboard"]
    llama = {p["slug"]: p for p in http.get("/protocols").json()}
    assert (llama["lend-a"]["oracles"], llama["dex-c"]["oracles"]) == (["Chainlink"], [])

    answer = http.get("/v2/protocols/lend-a/analytics", params={"asOf": last}).json()
    assert (answer["slug"], answer["tvl"], answer["asOf"], answer["reference"]) == (
        "lend-a",
        150.0,
        last,
        last,
    )
    drawdowns = {d["window"]: d for d in answer["drawdowns"]}
    for window in ("30d", "1y", "all"):
        assert drawdowns[window]["value"] == pytest.approx(0.75)
        assert (drawdowns[window]["peak_at"], drawdowns[window]["peak_value"]) == (
            T0 + 10 * DAY,
            200.0,
        )
        assert (drawdowns[window]["trough_at"], drawdowns[window]["trough_value"]) == (
            T0 + 15 * DAY,
            50.0,
        )
    assert answer["concentration"]["hhi"] == pytest.approx(0.75**2 + 0.25**2)
    assert answer["concentration"]["largest_chain"] == "Ethereum"
    assert answer["category_standing"] == {
        "category": "Lending",
        "rank": 2,
        "protocols": 2,
        "share": pytest.approx(150 / 1_200),
    }
    assert answer["oracles"] == {"count": 1, "names": ["Chainlink"]}
    assert answer["series"]["first_observed_at"] == T0
    assert answer["series"]["age_days"] == pytest.approx(39 + 1 / 24)
    assert answer["series"]["staleness_days"] == 0.0
    volatility = {v["window"]: v for v in answer["volatility"]}
    assert volatility["7d"]["returns"] == 7
    assert volatility["30d"]["returns"] == 30
    assert answer["trend"]["change"] > 0  # recovering over the last 30 days
    score = answer["risk"]["score"]
    assert 0 <= score <= 100
    assert recomputed(answer["risk"]) == pytest.approx(score, rel=1e-12)

    # As of day 12 only the first 13 days count: a fall of 40 % from day 10's peak so far.
    early = http.get("/v2/protocols/lend-a/analytics", params={"asOf": T0 + 12 * DAY + HOUR}).json()
    assert early["tvl"] == 120.0
    assert {d["window"]: d["value"] for d in early["drawdowns"]}["all"] == pytest.approx(0.4)
    assert recomputed(early["risk"]) == pytest.approx(early["risk"]["score"], rel=1e-12)

    # The risk list answers the same scores, highest risk first, filtered as /v2/protocols.
    listed = http.get("/v2/analytics/risk", params={"asOf": last}).json()
    assert listed["total"] == 3
    scores = [p["risk"]["score"] for p in listed["protocols"]]
    assert scores == sorted(scores, reverse=True)
    by_slug = {p["slug"]: p for p in listed["protocols"]}
    assert by_slug["lend-a"]["risk"] == answer["risk"]
    for entry in listed["protocols"]:
        assert recomputed(entry["risk"]) == pytest.approx(entry["risk"]["score"], rel=1e-12)
    lending = http.get(
        "/v2/analytics/risk", params={"asOf": last, "category": "Lending", "sort": "tvl"}
    ).json()
    assert [p["slug"] for p in lending["protocols"]] == ["lend-b", "lend-a"]
    page = http.get("/v2/analytics/risk", params={"limit": 1, "offset": 1, "order": "asc"}).json()
    assert (page["total"], len(page["protocols"]), page["asOf"]) == (3, 1, None)
    now = {p["slug"]: p for p in http.get("/v2/analytics/risk").json()["protocols"]}
    live = http.get("/v2/protocols/dex-c/analytics").json()
    # "Now" moves between two requests: only the age and staleness terms may differ.
    assert now["dex-c"]["risk"]["score"] == pytest.approx(live["risk"]["score"], rel=1e-6)

    # Refusals: unknown protocol or slug 404, unknown or bad parameter 400.
    assert_error(http.get("/v2/protocols/nope/analytics"), 404, "protocol_not_found")
    assert_error(http.get("/v2/protocols/Not..A-Slug/analytics"), 404, "protocol_not_found")
    assert_error(
        http.get("/v2/protocols/lend-a/analytics", params={"asOf": T0 - DAY}),
        404,
        "protocol_not_found",
    )
    assert_error(
        http.get("/v2/protocols/lend-a/analytics", params={"window": "7d"}),
        400,
        "invalid_parameter",
    )
    assert_error(http.get("/v2/analytics/risk", params={"sort": "risk"}), 400, "invalid_parameter")
    assert_error(http.get("/v2/analytics/risk", params={"bogus": "1"}), 400, "invalid_parameter")
