"""DeFiLlama's TVL sections (``staking``, ``pool2``, ``borrowed``, ``Ethereum-borrowed``...)
are kept as metrics of their own, never added to ``tvl``, and shown where DeFiLlama shows
them: imported from its ``/protocols`` and ``/protocol/{slug}`` shapes, served back on ours
and on its own paths."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.e2e.conftest import settle, start_server
from tests.e2e.test_cli import run, totals

DAY = 1_765_497_600  # 2025-12-12 00:00 UTC
LITE = [
    {
        "name": "Aave V3",
        "slug": "aave-v3",
        "category": "Lending",
        "chains": ["Ethereum", "Arbitrum"],
        "url": "https://aave.com",
        "tvl": 300.0,
        "chainTvls": {
            "Ethereum": 200.0,
            "Arbitrum": 100.0,
            "borrowed": 50.0,
            "Ethereum-borrowed": 40.0,
            "Arbitrum-borrowed": 10.0,
            "staking": 7.0,
            "Ethereum-staking": 7.0,
        },
    }
]
DETAIL = {
    "name": "Aave V3",
    "slug": "aave-v3",
    "category": "Lending",
    "chains": ["Ethereum", "Arbitrum"],
    "url": "https://aave.com",
    "tvl": [{"date": DAY - 86_400, "totalLiquidityUSD": 280.0}],
    "chainTvls": {
        "Ethereum": {"tvl": [{"date": DAY - 86_400, "totalLiquidityUSD": 190.0}]},
        "staking": {"tvl": [{"date": DAY - 86_400, "totalLiquidityUSD": 6.0}]},
        "Ethereum-staking": {"tvl": [{"date": DAY - 86_400, "totalLiquidityUSD": 6.0}]},
    },
}


def test_sections_are_their_own_metrics_outside_tvl(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    detail = tmp_path / "aave-v3.json"
    detail.write_text(json.dumps(DETAIL))
    lite = tmp_path / "protocols.json"
    lite.write_text(json.dumps(LITE))
    assert totals(run(data_dir, "ingest", str(detail)).stderr)["accepted"] == 4
    # A /protocols file is stamped with the time it was written (the file's mtime).
    imported = run(data_dir, "ingest", str(lite), "--source", "defillama:protocols")
    assert totals(imported.stderr) == {"accepted": 8, "duplicates": 0, "rejected": 0}

    with start_server(data_dir) as server, httpx.Client(base_url=server.base_url) as http:
        settle(http)
        ours = http.get("/v2/protocols/aave-v3").json()
        assert ours["tvl"] == 300.0  # the sections are never added to tvl
        assert ours["chainTvls"] == {"Ethereum": 200.0, "Arbitrum": 100.0}
        assert ours["sections"] == {
            "borrowed": 50.0,
            "Ethereum-borrowed": 40.0,
            "Arbitrum-borrowed": 10.0,
            "staking": 7.0,
            "Ethereum-staking": 7.0,
        }
        # No "chains do not add up" flag: the sections are not chains.
        quality = http.get("/v2/data-quality").json()
        assert not [f for f in quality["findings"] if f["kind"] == "chains_do_not_add_up"]

        # DeFiLlama's own shapes: sections beside the chains, as DeFiLlama writes them.
        listed = {p["slug"]: p for p in http.get("/protocols").json()}["aave-v3"]
        assert listed["tvl"] == 300.0
        assert listed["chainTvls"] == {
            "Ethereum": 200.0,
            "Arbitrum": 100.0,
            "borrowed": 50.0,
            "Ethereum-borrowed": 40.0,
            "Arbitrum-borrowed": 10.0,
            "staking": 7.0,
            "Ethereum-staking": 7.0,
        }
        protocol = http.get("/protocol/aave-v3").json()
        assert protocol["currentChainTvls"]["Ethereum-staking"] == 7.0
        assert protocol["currentChainTvls"]["Ethereum"] == 200.0
        staking = protocol["chainTvls"]["staking"]["tvl"]
        assert staking[0] == {"date": DAY - 86_400, "totalLiquidityUSD": 6.0}
        assert http.get("/tvl/aave-v3").json() == 300.0

        # Each section is a series of its own, queried like any metric.
        series = http.get("/v2/protocols/aave-v3/metrics", params={"metric": "staking"})
        assert series.status_code == 200, series.text
        assert [p["value"] for p in series.json()["points"]] == [6.0, 7.0]
