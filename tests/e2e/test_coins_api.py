"""DeFiLlama's coins API through HTTP: prices ingested with ``POST /v2/ingest``, read back
through ``/prices/current``, ``/prices/historical``, ``/batchHistorical``, ``/chart``,
``/percentage`` and ``/prices/first`` in DeFiLlama's shapes; and its 400s.

Most tests read one market seeded once (module scope); the tests on ``server`` run on the
embedded adapters and on PostgreSQL + Redis + RabbitMQ.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from defi_realtime.application.coins import MAX_COINS, MAX_POINTS
from tests.e2e.conftest import LiveServer, assert_error, settle

BACKENDS = ("embedded", "production")

T0 = 1_765_000_000
ETH = "coingecko:ethereum"
BTC = "coingecko:bitcoin"
DAI = "coingecko:dai"
USDC = "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
USDC_LOWER = USDC.lower()
SOL_USDC = "solana:EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v"
HOUR = 3_600
DAY = 86_400


@dataclass(frozen=True)
class Market:
    now: float


def _ingest(http: httpx.Client, server: LiveServer, prices: list[dict[str, Any]]) -> None:
    response = http.post("/v2/ingest", json={"prices": prices}, headers=server.headers)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(prices), response.text
    settle(http)


@pytest.fixture(scope="module")
def market(shared_server: LiveServer) -> Market:
    now = time.time()
    prices = [
        # History: three days of ether, hourly on the first.
        *(
            {"token": ETH, "price": 3_000.0 + hour, "observed_at": T0 + hour * HOUR}
            for hour in range(24)
        ),
        {"token": ETH, "price": 3_300.0, "observed_at": T0 + DAY, "confidence": 0.99},
        {"token": ETH, "price": 3_630.0, "observed_at": T0 + 2 * DAY},
        # A correction of T0 + 2 days, recorded later: it is the price of that time.
        {"token": ETH, "price": 3_600.0, "observed_at": T0 + 2 * DAY, "confidence": 0.9},
        # Current: ether 10 minutes ago, bitcoin 7 hours ago (beyond the default 6h).
        {"token": ETH, "price": 3_100.0, "observed_at": now - 600, "confidence": 0.98},
        {"token": BTC, "price": 90_000.0, "observed_at": now - 7 * HOUR},
        {"token": DAI, "price": 1.0, "observed_at": now - 5 * HOUR},
        # One USDC written two ways: one token.
        {"token": USDC, "price": 1.0, "observed_at": T0},
        {"token": USDC_LOWER, "price": 0.999, "observed_at": T0 + HOUR},
        {"token": SOL_USDC, "price": 1.001, "observed_at": T0},
    ]
    with httpx.Client(base_url=shared_server.base_url, timeout=10.0) as http:
        _ingest(http, shared_server, prices)
    return Market(now=now)


@pytest.fixture
def coins(shared_http: httpx.Client, market: Market) -> httpx.Client:
    return shared_http


def _coins(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"coins"}, body
    found: dict[str, Any] = body["coins"]
    return found


# --- /prices/current ------------------------------------------------------------------------------


def test_current_prices_in_defillamas_shape(coins: httpx.Client, market: Market) -> None:
    found = _coins(coins.get(f"/prices/current/{ETH},{BTC},coingecko:unknown"))
    # Bitcoin's price is 7 hours old (default searchWidth 6h); unknown coins are left out.
    assert list(found) == [ETH]
    assert found[ETH] == {
        "decimals": None,
        "price": 3_100.0,
        "symbol": None,
        "timestamp": pytest.approx(market.now - 600),
        "confidence": 0.98,
    }


def test_current_search_width_is_the_oldest_a_price_may_be(coins: httpx.Client) -> None:
    # DeFiLlama's default: 6 hours (DAI's price is 5 hours old).
    assert list(_coins(coins.get(f"/prices/current/{DAI}"))) == [DAI]
    assert _coins(coins.get(f"/prices/current/{DAI}", params={"searchWidth": "4h"})) == {}
    assert list(_coins(coins.get(f"/prices/current/{BTC}", params={"searchWidth": "8h"}))) == [BTC]
    assert _coins(coins.get(f"/prices/current/{BTC}", params={"searchWidth": "6H"})) == {}
    assert _coins(coins.get(f"/prices/current/{ETH}", params={"searchWidth": "300"})) == {}
    assert list(_coins(coins.get(f"/prices/current/{ETH}", params={"searchWidth": "11m"}))) == [ETH]


# --- /prices/historical ---------------------------------------------------------------------------


def test_historical_price_is_the_nearest_within_search_width(coins: httpx.Client) -> None:
    found = _coins(coins.get(f"/prices/historical/{T0 + 2 * HOUR + 1_000}/{ETH},{BTC}"))
    assert found == {
        ETH: {
            "decimals": None,
            "price": 3_002.0,
            "symbol": None,
            "timestamp": T0 + 2 * HOUR,
            "confidence": None,
        }
    }
    # DeFiLlama's integer timestamps: an integral time is a JSON integer.
    assert isinstance(found[ETH]["timestamp"], int)
    # Nearer to the next hour; equally near: the earlier.
    at = f"/prices/historical/{T0 + 2 * HOUR + 2_000}/{ETH}"
    assert _coins(coins.get(at))[ETH]["price"] == 3_003.0
    assert _coins(coins.get(f"/prices/historical/{T0 + 2 * HOUR + 1_800}/{ETH}"))[ETH]["price"] == (
        3_002.0
    )
    # Eleven hours after the second day's price: nothing within the default 6h.
    assert _coins(coins.get(f"/prices/historical/{T0 + 35 * HOUR}/{ETH}")) == {}
    wide = coins.get(f"/prices/historical/{T0 + 35 * HOUR}/{ETH}", params={"searchWidth": "1d"})
    assert _coins(wide)[ETH]["timestamp"] == T0 + DAY
    before = coins.get(f"/prices/historical/{T0 - 100}/{ETH}", params={"searchWidth": "60"})
    assert _coins(before) == {}


def test_a_correction_is_the_price_of_its_time(coins: httpx.Client) -> None:
    found = _coins(coins.get(f"/prices/historical/{T0 + 2 * DAY}/{ETH}"))
    assert (found[ETH]["price"], found[ETH]["confidence"]) == (3_600.0, 0.9)


def test_two_spellings_of_an_address_are_one_coin_keyed_as_asked(coins: httpx.Client) -> None:
    found = _coins(coins.get(f"/prices/historical/{T0 + HOUR}/{USDC},{USDC_LOWER}"))
    assert list(found) == [USDC, USDC_LOWER]
    assert found[USDC] == found[USDC_LOWER]
    assert found[USDC]["price"] == 0.999
    first = _coins(coins.get(f"/prices/first/{USDC_LOWER}"))
    assert first == {USDC_LOWER: {"price": 1.0, "symbol": None, "timestamp": T0}}
    # A Solana address is case-sensitive: another case is another coin.
    assert list(_coins(coins.get(f"/prices/first/{SOL_USDC}"))) == [SOL_USDC]
    assert _coins(coins.get(f"/prices/first/{SOL_USDC.lower()}")) == {}


# --- /batchHistorical -----------------------------------------------------------------------------


def test_batch_historical_prices_each_time(coins: httpx.Client) -> None:
    wanted = {ETH: [T0 + 5 * HOUR + 60, T0 + DAY, T0 - DAY], USDC: [T0 + 10], BTC: [T0]}
    response = coins.get(
        "/batchHistorical", params={"coins": json.dumps(wanted), "searchWidth": "600"}
    )
    found = _coins(response)
    assert found == {
        ETH: {
            "symbol": None,
            "prices": [
                {"timestamp": T0 + 5 * HOUR, "price": 3_005.0, "confidence": None},
                {"timestamp": T0 + DAY, "price": 3_300.0, "confidence": 0.99},
            ],
        },
        USDC: {"symbol": None, "prices": [{"timestamp": T0, "price": 1.0, "confidence": None}]},
    }


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '{"coingecko:ethereum": [1, 1]',
        '{"coingecko:ethereum": [1], "coingecko:ethereum": [2]}',
        '{"coingecko:ethereum": [NaN]}',
        '{"coingecko:ethereum": [true]}',
        '{"coingecko:ethereum": 1765000000}',
        '{"Ethereum:0xabc": [1765000000]}',
        "{}",
        json.dumps({ETH: [T0 + n for n in range(MAX_POINTS + 1)]}),
        json.dumps({f"coingecko:c{n}": [T0] for n in range(MAX_COINS + 1)}),
    ],
)
def test_batch_historical_refuses_a_bad_coins_object(coins: httpx.Client, raw: str) -> None:
    error = assert_error(
        coins.get("/batchHistorical", params={"coins": raw}), 400, "invalid_parameter"
    )
    assert error["details"] == {"parameter": "coins"}, error


def test_batch_historical_is_bounded_in_prices_across_coins(coins: httpx.Client) -> None:
    half = MAX_POINTS // 2 + 1
    wanted = {ETH: [T0 + n for n in range(half)], BTC: [T0 + n for n in range(half)]}
    response = coins.get("/batchHistorical", params={"coins": json.dumps(wanted)})
    error = assert_error(response, 400, "invalid_parameter")
    assert error["details"] == {"parameter": "coins"}
    assert str(MAX_POINTS) in error["message"]


# --- /chart ---------------------------------------------------------------------------------------


def test_chart_goes_forward_from_start(coins: httpx.Client) -> None:
    response = coins.get(
        f"/chart/{ETH},{USDC}",
        params={"start": T0, "span": 4, "period": "1d", "searchWidth": "600"},
    )
    found = _coins(response)
    assert found == {
        ETH: {
            "symbol": None,
            "confidence": 0.9,  # the chart's latest price's
            "decimals": None,
            "prices": [
                {"timestamp": T0, "price": 3_000.0},
                {"timestamp": T0 + DAY, "price": 3_300.0},
                {"timestamp": T0 + 2 * DAY, "price": 3_600.0},
            ],
        },
        USDC: {
            "symbol": None,
            "confidence": None,
            "decimals": None,
            "prices": [{"timestamp": T0, "price": 1.0}],
        },
    }


def test_chart_goes_back_from_end_and_reports_each_price_once(coins: httpx.Client) -> None:
    # Every 10 minutes over 2 hours, each within 30 minutes: the hourly prices, once each.
    response = coins.get(
        f"/chart/{ETH}",
        params={"end": T0 + 3 * HOUR, "span": 13, "period": "10m", "searchWidth": "30m"},
    )
    prices = _coins(response)[ETH]["prices"]
    assert prices == [
        {"timestamp": T0 + hour * HOUR, "price": 3_000.0 + hour} for hour in (1, 2, 3)
    ]


def test_chart_defaults_to_one_point_now(coins: httpx.Client) -> None:
    # Default: end now, period 1d, searchWidth a tenth of it (2.4h): ether 10 minutes ago.
    found = _coins(coins.get(f"/chart/{ETH},{BTC}"))
    assert list(found) == [ETH]
    assert [point["price"] for point in found[ETH]["prices"]] == [3_100.0]


def test_chart_refuses_start_with_end_and_too_many_points(coins: httpx.Client) -> None:
    both = coins.get(f"/chart/{ETH}", params={"start": T0, "end": T0 + DAY})
    error = assert_error(both, 400, "invalid_parameter")
    assert error["details"] == {"parameters": ["start", "end"]}
    many = coins.get(f"/chart/{ETH},{BTC}", params={"start": T0, "span": MAX_POINTS // 2 + 1})
    assert assert_error(many, 400, "invalid_parameter")["details"] == {"parameter": "span"}
    beyond = coins.get(f"/chart/{ETH}", params={"span": MAX_POINTS + 1})
    assert assert_error(beyond, 400, "invalid_parameter")["details"] == {"parameter": "span"}


# --- /percentage ----------------------------------------------------------------------------------


def test_percentage_change_over_a_period(coins: httpx.Client) -> None:
    back = _coins(coins.get(f"/percentage/{ETH},{BTC}", params={"timestamp": T0 + DAY}))
    assert back == {ETH: pytest.approx(10.0)}
    forward = coins.get(
        f"/percentage/{ETH}",
        params={"timestamp": T0 + DAY, "lookForward": "true", "period": "1D"},
    )
    assert _coins(forward) == {ETH: pytest.approx((3_600.0 - 3_300.0) / 3_300.0 * 100)}
    hourly = coins.get(f"/percentage/{ETH}", params={"timestamp": T0 + 4 * HOUR, "period": "2h"})
    assert _coins(hourly) == {ETH: pytest.approx(2.0 / 3_002.0 * 100)}
    # Nothing within 15 minutes of the start: left out.
    late = coins.get(f"/percentage/{ETH}", params={"timestamp": T0 + DAY + 20 * 60})
    assert _coins(late) == {}


# --- /prices/first --------------------------------------------------------------------------------


def test_first_price(coins: httpx.Client) -> None:
    found = _coins(coins.get(f"/prices/first/{ETH},{BTC},coingecko:unknown"))
    assert found[ETH] == {"price": 3_000.0, "symbol": None, "timestamp": T0}
    assert list(found) == [ETH, BTC]


# --- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/prices/current/coingecko:eth er", {}, "coins"),
        ("/prices/current/Ethereum:0xabc", {}, "coins"),
        ("/prices/current/ethereum", {}, "coins"),
        ("/prices/current/,", {}, "coins"),
        (
            "/prices/current/" + ",".join(f"coingecko:c{n}" for n in range(MAX_COINS + 1)),
            {},
            "coins",
        ),
        (f"/prices/current/{ETH}", {"searchWidth": "4s"}, "searchWidth"),
        (f"/prices/current/{ETH}", {"searchWidth": "-1h"}, "searchWidth"),
        (f"/prices/current/{ETH}", {"searchWidth": "99999w"}, "searchWidth"),
        (f"/prices/historical/soon/{ETH}", {}, "timestamp"),
        (f"/prices/historical/nan/{ETH}", {}, "timestamp"),
        (f"/prices/historical/-1/{ETH}", {}, "timestamp"),
        (f"/prices/historical/1765000000000/{ETH}", {}, "timestamp"),
        (f"/prices/historical/{T0}/coingecko:", {}, "coins"),
        ("/batchHistorical", {}, "coins"),
        ("/batchHistorical", {"coins": json.dumps({ETH: [T0]}), "searchWidth": "x"}, "searchWidth"),
        (f"/chart/{ETH}", {"period": "0"}, "period"),
        (f"/chart/{ETH}", {"period": "1y"}, "period"),
        (f"/chart/{ETH}", {"span": "-1"}, "span"),
        (f"/chart/{ETH}", {"span": "two"}, "span"),
        (f"/chart/{ETH}", {"start": "yesterday"}, "start"),
        (f"/chart/{ETH}", {"end": "inf"}, "end"),
        (f"/percentage/{ETH}", {"lookForward": "maybe"}, "lookForward"),
        (f"/percentage/{ETH}", {"timestamp": "x"}, "timestamp"),
        (f"/percentage/{ETH}", {"period": "-2d"}, "period"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_parameter(
    coins: httpx.Client, path: str, params: dict[str, str], parameter: str
) -> None:
    error = assert_error(coins.get(path, params=params), 400, "invalid_parameter")
    assert error["details"] == {"parameter": parameter}, error
    assert parameter in error["message"], error


@pytest.mark.parametrize(
    "path",
    [
        f"/prices/current/{ETH}",
        f"/prices/historical/{T0}/{ETH}",
        "/batchHistorical",
        f"/chart/{ETH}",
        f"/percentage/{ETH}",
        f"/prices/first/{ETH}",
    ],
)
def test_unknown_query_parameters_are_refused(coins: httpx.Client, path: str) -> None:
    error = assert_error(coins.get(path, params={"search_width": "4h"}), 400, "invalid_parameter")
    assert error["details"] == {"parameters": ["search_width"]}


def test_the_coins_paths_are_documented(coins: httpx.Client) -> None:
    paths = coins.get("/openapi.json").json()["paths"]
    for path in (
        "/prices/current/{coins}",
        "/prices/historical/{timestamp}/{coins}",
        "/batchHistorical",
        "/chart/{coins}",
        "/percentage/{coins}",
        "/prices/first/{coins}",
    ):
        assert set(paths[path]) == {"get"}, path
    chart = {p["name"] for p in paths["/chart/{coins}"]["get"]["parameters"]}
    assert chart == {"coins", "start", "end", "span", "period", "searchWidth"}


# --- on both backends -----------------------------------------------------------------------------


def test_two_spellings_are_one_token_everywhere(server: LiveServer, http: httpx.Client) -> None:
    now = time.time()
    _ingest(
        http,
        server,
        [
            {"token": USDC, "price": 1.0, "observed_at": now - 120},
            {"token": USDC_LOWER, "price": 0.999, "observed_at": now - 60},
        ],
    )
    realtime = http.get("/v2/realtime/prices")
    assert realtime.status_code == 200, realtime.text
    assert [(entry["token"], entry["price"]) for entry in realtime.json()["data"]] == [
        (USDC_LOWER, 0.999)
    ]
    named = http.get("/v2/realtime/prices", params={"tokens": USDC})
    assert [entry["token"] for entry in named.json()["data"]] == [USDC_LOWER]
    current = _coins(http.get(f"/prices/current/{USDC}"))
    assert current[USDC]["price"] == 0.999
    chart = _coins(
        http.get(f"/chart/{USDC_LOWER}", params={"start": now - 120, "span": 2, "period": "1m"})
    )
    assert [point["price"] for point in chart[USDC_LOWER]["prices"]] == [1.0, 0.999]


# --- a third-party DeFiLlama client ---------------------------------------------------------------


def test_pypis_defillama_client_reads_our_prices(shared_server: LiveServer, market: Market) -> None:
    """PyPI's ``DeFiLlama`` client, its base URL set to ours (its batchHistorical call has
    coins.llama.fi written in full, so it is not asked here)."""
    import defillama.defillama as client_module

    before = client_module.BASE_URL
    client_module.BASE_URL = shared_server.base_url
    try:
        client = client_module.DefiLlama()
        current = client.get_token_current_prices(f"{ETH},{BTC}")
        assert list(current["coins"]) == [ETH]
        historical = client.get_token_historical_prices(ETH, T0 + DAY)
        assert historical["coins"][ETH]["price"] == 3_300.0
        chart = client.get_token_prices_at_intervals(ETH, start=T0, end=None, span=3, period="1d")
        assert [point["price"] for point in chart["coins"][ETH]["prices"]] == [
            3_000.0,
            3_300.0,
            3_600.0,
        ]
        change = client.get_percentage_price_change(ETH, T0 + DAY, lookForward=False, period="1d")
        assert change["coins"][ETH] == pytest.approx(10.0)
    finally:
        client_module.BASE_URL = before
