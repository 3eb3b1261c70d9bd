"""DeFiLlama's volume and fee paths, read by PyPI's DeFiLlama client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import LiveServer, assert_error, obs, settle

DAY = 86_400
D0 = 1_700_006_400  # 00:00 UTC


@pytest.fixture
def client(server: LiveServer) -> Iterator[Any]:
    import defillama.defillama as client_module

    before = client_module.BASE_URL
    client_module.BASE_URL = server.base_url
    try:
        yield client_module.DefiLlama()
    finally:
        client_module.BASE_URL = before


def seed(http: httpx.Client, server: LiveServer) -> None:
    items = [
        obs("orca", 1.0, D0, name="Orca", category="Dexs", chains=["Solana"]),
        obs("uni", 1.0, D0, name="Uniswap", category="Dexs", chains=["Ethereum", "Base"]),
    ]
    for day in range(31):  # orca: 100, 101, ... a day; two readings on the last day
        items.append(obs("orca", 100.0 + day, D0 + day * DAY + 3_600, metric="volume_24h"))
    items.append(obs("orca", 200.0, D0 + 30 * DAY + 7_200, metric="volume_24h"))
    items.append(obs("uni", 50.0, D0 + 29 * DAY, metric="volume_24h"))
    items.append(obs("uni", 70.0, D0 + 30 * DAY, metric="volume_24h"))
    items.append(obs("uni", 30.0, D0 + 30 * DAY, metric="volume_24h", chain="Base"))
    items.append(obs("uni", 9.0, D0 + 30 * DAY, metric="fees_24h"))
    response = http.post("/v2/ingest", json={"observations": items}, headers=server.headers)
    assert response.status_code == 200, response.text
    settle(http)


def test_overview_and_summary_of_volumes_and_fees(
    server: LiveServer, http: httpx.Client, client: Any
) -> None:
    seed(http, server)
    overview = client.get_dexs(excludeTotalDataChart=False, excludeTotalDataChartBreakdown=False)
    rows = {p["slug"]: p for p in overview["protocols"]}
    orca = rows["orca"]
    # The day's last reading: 200 on the last day; the day before 129; a week before 123.
    assert (orca["total24h"], orca["total48hto24h"]) == (200.0, 129.0)
    assert orca["total7d"] == 200.0 + sum(100.0 + d for d in range(24, 30))
    assert orca["total30d"] == 200.0 + sum(100.0 + d for d in range(1, 30))
    assert orca["change_1d"] == pytest.approx((200 / 129 - 1) * 100)
    assert orca["change_7d"] == pytest.approx((200 / 123 - 1) * 100)
    assert orca["change_1m"] == pytest.approx(100.0)
    assert rows["uni"]["change_1d"] == pytest.approx(40.0)
    assert [p["slug"] for p in overview["protocols"]] == ["orca", "uni"]  # largest first
    assert overview["total24h"] == 270.0
    assert overview["totalDataChart"][-2:] == [[D0 + 29 * DAY, 179.0], [D0 + 30 * DAY, 270.0]]
    assert overview["totalDataChartBreakdown"][-1] == [
        D0 + 30 * DAY,
        {"Orca": 200.0, "Uniswap": 70.0},
    ]
    assert overview["allChains"] == ["Base", "Ethereum", "Solana"]
    assert client.get_dexs()["totalDataChart"] == []

    summary = client.get_dex_summary("uni")
    assert (summary["total24h"], summary["totalAllTime"]) == (70.0, 120.0)
    assert summary["totalDataChart"] == [[D0 + 29 * DAY, 50.0], [D0 + 30 * DAY, 70.0]]
    fees = client.get_fees()
    assert [(p["slug"], p["total24h"]) for p in fees["protocols"]] == [("uni", 9.0)]
    assert client.get_fees_protocol("uni")["total24h"] == 9.0

    # On a chain: uni's own Base series; orca (Solana alone) on Solana from its total.
    base = http.get("/overview/dexs/base").json()
    assert [(p["slug"], p["total24h"]) for p in base["protocols"]] == [("uni", 30.0)]
    solana = http.get("/overview/dexs/Solana").json()
    assert [(p["slug"], p["total24h"]) for p in solana["protocols"]] == [("orca", 200.0)]

    assert_error(http.get("/summary/dexs/orca-nope"), 404, "protocol_not_found")
    assert_error(http.get("/summary/fees/orca"), 404, "protocol_not_found")
    assert_error(
        http.get("/overview/dexs", params={"dataType": "dailyRevenue"}), 400, "invalid_parameter"
    )


def test_v2_protocols_carry_the_flows_own_changes_now_and_as_of(
    server: LiveServer, http: httpx.Client
) -> None:
    seed(http, server)
    # orca's current volume (200, two hours into the last day) against the figures nearest a
    # day and a week before it, as /overview/dexs computes them from the day closes here.
    page = http.get("/v2/protocols", params={"sort": "volume_24h_change_1d"}).json()
    rows = {p["slug"]: p for p in page["protocols"]}
    assert [p["slug"] for p in page["protocols"]] == ["orca", "uni"]
    assert rows["orca"]["volume_24h_change_1d"] == pytest.approx((200 / 129 - 1) * 100)
    assert rows["orca"]["volume_24h_change_7d"] == pytest.approx((200 / 123 - 1) * 100)
    assert rows["uni"]["volume_24h_change_1d"] == pytest.approx(40.0)
    assert rows["uni"]["volume_24h_change_7d"] is None  # nothing a week back
    assert rows["uni"]["fees_24h_change_1d"] is None  # one fee figure only
    # A day earlier, from the history read model: 129 against 128 and 122.
    earlier = http.get("/v2/protocols/orca", params={"asOf": D0 + 29 * DAY + 3_600}).json()
    assert earlier["volume_24h"] == 129.0
    assert earlier["volume_24h_change_1d"] == pytest.approx((129 / 128 - 1) * 100)
    assert earlier["volume_24h_change_7d"] == pytest.approx((129 / 122 - 1) * 100)
