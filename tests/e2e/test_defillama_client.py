"""A third-party DeFiLlama client, unchanged, against this server holding real DeFiLlama data.

The client is PyPI's ``DeFiLlama`` (``import defillama``), whose one base URL serves every
call (``/protocols``, ``/protocol/{slug}``, ``/tvl/{slug}``, ``/v2/chains``,
``/v2/historicalChainTvl``, the coins paths): pointing it here is setting that URL. The
server holds the shared captures (``protocol-snapshots`` and ``tvl-history``) ingested by
the CLI; every figure is checked against a recomputation from the files, by DeFiLlama's
definitions as docs/defillama-api.md states them.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.application.chain_tvl import CARRY_DAYS, counts_in_chain_tvl
from defi_realtime.domain.chains import canonical_chain
from defi_realtime.domain.protocol import slugify
from tests.services import require_file

from .conftest import LiveServer, settle, start_server

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[3] / "shared/data/defillama"
SNAPSHOTS = DATA / "protocol-snapshots.jsonl.gz"
HISTORY = DATA / "tvl-history.jsonl.gz"
CLI = str(Path(sys.executable).with_name("defi-realtime"))
DAY = 86_400
# Two names of the capture share this slug (a known quirk): its values are not compared.
AMBIGUOUS = {"meth-protocol"}


def _rows(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


class Expected:
    """What the files say, recomputed here, independently of the server's code."""

    def __init__(self) -> None:
        # slug -> [(time, order, value, category, chains)], order = line order in the files.
        self.points: dict[str, list[tuple[float, int, float, str, tuple[str, ...]]]] = defaultdict(
            list
        )
        # slug -> (time, order, category, chains) of its newest listing (a null TVL too).
        self.listings: dict[str, tuple[float, int, str, tuple[str, ...]]] = {}
        order = 0
        for row in _rows(SNAPSHOTS):
            order += 1
            at = datetime.fromisoformat(row["captured_at"]).timestamp()
            chains = tuple(dict.fromkeys(canonical_chain(c) for c in row["chains"]))
            slug = slugify(row["name"])
            if slug not in self.listings or (at, order) >= self.listings[slug][:2]:
                self.listings[slug] = (at, order, row["category"], chains)
            if row["tvl"] is None or row["tvl"] < 0:
                continue
            self.points[slug].append((at, order, float(row["tvl"]), row["category"], chains))
        self.history_only: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in _rows(HISTORY):
            order += 1
            slug = slugify(row["protocol"])
            self.history_only[slug].append((int(row["date"]), float(row["tvl"])))
            self.points[slug].append((float(row["date"]), order, float(row["tvl"]), "", ()))

    def current(self, slug: str) -> float:
        return max(self.points[slug], key=lambda p: (p[0], p[1]))[2]

    def listing(self, slug: str) -> tuple[str, tuple[str, ...]]:
        """(category, chains) of the newest listing; a history-only protocol has none."""
        if slug not in self.listings:
            return "", ()
        _, _, category, chains = self.listings[slug]
        return category, chains

    def daily(self, slug: str) -> dict[int, float]:
        """Day start -> the day's last value."""
        last: dict[int, tuple[float, int, float]] = {}
        for at, order, value, *_ in self.points[slug]:
            day = int(at // DAY) * DAY
            if day not in last or (at, order) >= last[day][:2]:
                last[day] = (at, order, value)
        return {day: value for day, (_, _, value) in sorted(last.items())}

    def chain_tvl_on(self, day: int, chain: str | None) -> float:
        """Sum over counted protocols of their value on ``day`` (carried up to CARRY_DAYS)."""
        total = 0.0
        for slug in self.points:
            category, chains = self.listing(slug)
            if not counts_in_chain_tvl(category):
                continue
            if chain is not None and chains != (chain,):
                continue
            days = [d for d in self.daily(slug) if day - CARRY_DAYS * DAY <= d <= day]
            if days:
                total += self.daily(slug)[max(days)]
        return total


@pytest.fixture(scope="module")
def expected() -> Expected:
    return Expected()


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, LiveServer]]:
    require_file(SNAPSHOTS)
    import defillama.defillama as client_module

    data_dir = tmp_path_factory.mktemp("llama") / "data"
    env = {
        k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "AMQP_URL", "DATABASE_URL"}
    }
    env["DATA_DIR"] = str(data_dir)
    for path in (SNAPSHOTS, HISTORY):
        done = subprocess.run(
            [CLI, "ingest", str(path)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    # 82,000 events: the embedded hot projection folds them all at start (issue 15).
    with start_server(data_dir, start_timeout=120) as live:
        with httpx.Client(base_url=live.base_url, timeout=60) as http:
            settle(http, timeout=120)
        before = client_module.BASE_URL
        client_module.BASE_URL = live.base_url
        try:
            yield client_module.DefiLlama(), live
        finally:
            client_module.BASE_URL = before


def test_lists_protocols_with_the_latest_captures_values(
    llama: tuple[Any, LiveServer], expected: Expected
) -> None:
    client, _ = llama
    protocols = client.get_all_protocols()
    by_slug = {p["slug"]: p for p in protocols}
    assert len(by_slug) == len(protocols) > 6_000
    compared = 0
    for slug in expected.points:
        if slug in AMBIGUOUS or slug in expected.history_only:
            continue
        item = by_slug[slug]
        assert item["tvl"] == pytest.approx(expected.current(slug), rel=1e-12), slug
        category, chains = expected.listing(slug)
        assert (item["category"], tuple(item["chains"])) == (category, chains), slug
        assert item["chain"] == (chains[0] if len(chains) == 1 else "Multi-Chain")
        compared += 1
    assert compared > 5_000
    # The shape DeFiLlama's lite listing has, with what we do not hold present and null.
    aave = by_slug["aave-v3"]
    assert {
        "id",
        "name",
        "symbol",
        "url",
        "logo",
        "audits",
        "gecko_id",
        "cmcId",
        "category",
        "chains",
        "oracles",
        "slug",
        "tvl",
        "chainTvls",
        "change_1h",
        "change_1d",
        "change_7d",
        "mcap",
    } <= set(aave)
    assert aave["logo"] is None
    assert aave["mcap"] is None
    # Largest first; the listing's changes are the 1-day change DeFiLlama defines.
    tvls = [p["tvl"] for p in protocols if p["tvl"] is not None]
    assert tvls == sorted(tvls, reverse=True)
    daily = expected.daily("aave-v3")
    last, before = sorted(daily)[-1], sorted(daily)[-2]
    assert last - before == DAY
    assert aave["change_1d"] == pytest.approx((daily[last] / daily[before] - 1) * 100, rel=1e-3)


def test_current_tvl_and_daily_history_of_a_protocol(
    llama: tuple[Any, LiveServer], expected: Expected
) -> None:
    client, _ = llama
    assert client.get_protocol_current_tvl("aave-v3") == pytest.approx(
        expected.current("aave-v3"), rel=1e-12
    )
    aave = client.get_protocol("aave-v3")
    assert {(p["date"], p["totalLiquidityUSD"]) for p in aave["tvl"]} == set(
        expected.daily("aave-v3").items()
    )
    assert aave["currentChainTvls"] == {}  # many chains, only a total: not split
    # A history protocol: years of daily points, each the file's value for its day.
    slug = max(expected.history_only, key=lambda s: len(expected.history_only[s]))
    series = client.get_protocol(slug)["tvl"]
    assert [(p["date"], p["totalLiquidityUSD"]) for p in series] == list(
        expected.daily(slug).items()
    )
    assert len(series) > 1_000
    # A single-chain protocol: its total is that chain's.
    solana_only = next(
        s
        for s in expected.points
        if s not in expected.history_only
        and s not in AMBIGUOUS
        and expected.listing(s)[1] == ("Solana",)
    )
    detail = client.get_protocol(solana_only)
    assert detail["currentChainTvls"] == {"Solana": pytest.approx(expected.current(solana_only))}
    assert detail["chainTvls"]["Solana"]["tvl"] == detail["tvl"]


def test_chains_now_and_their_daily_history(
    llama: tuple[Any, LiveServer], expected: Expected
) -> None:
    client, live = llama
    chains = {c["name"]: c for c in client.get_chains_current_tvl()}
    assert (chains["Ethereum"]["tokenSymbol"], chains["Ethereum"]["gecko_id"]) == (
        "ETH",
        "ethereum",
    )
    assert chains["BSC"]["chainId"] == 56
    last_day = max(max(expected.daily(s)) for s in expected.points)
    for chain in ("Solana", "Ethereum", "Sui"):
        history = client.get_historical_tvl_chain(chain.lower())
        assert history[-1]["date"] == last_day
        want = expected.chain_tvl_on(last_day, chain)
        assert history[-1]["tvl"] == pytest.approx(want, rel=1e-9), chain
    everything = client.get_historical_tvl()
    assert everything[-1]["date"] == last_day
    assert everything[-1]["tvl"] == pytest.approx(expected.chain_tvl_on(last_day, None), rel=1e-9)
    assert everything[0]["date"] < datetime(2022, 1, 1).timestamp()  # the histories' years
    with httpx.Client(base_url=live.base_url) as http:
        assert http.get("/v2/historicalChainTvl/no-such-chain").status_code == 404
        assert http.get("/v2/chains?unknown=1").status_code == 400
        assert http.get("/tvl/no-such-protocol").status_code == 404
    # An alias is the chain it names.
    assert client.get_historical_tvl_chain("Binance") == client.get_historical_tvl_chain("BSC")
    assert math.isfinite(chains["Solana"]["tvl"])


def test_as_of_a_capture_time_the_list_is_that_capture(
    llama: tuple[Any, LiveServer], expected: Expected
) -> None:
    _, live = llama
    captures: dict[float, list[tuple[float, str]]] = defaultdict(list)
    for row in _rows(SNAPSHOTS):
        if row["tvl"] is not None and row["tvl"] >= 0:
            at = datetime.fromisoformat(row["captured_at"]).timestamp()
            captures[at].append((row["tvl"], slugify(row["name"])))
    with httpx.Client(base_url=live.base_url, timeout=60) as http:
        for at in sorted(captures)[:: len(captures) // 3]:
            top = sorted(captures[at], reverse=True)[:10]
            answer = http.get("/v2/protocols", params={"asOf": at, "sort": "tvl", "limit": 10})
            assert answer.status_code == 200, answer.text
            got = [(p["tvl"], p["slug"]) for p in answer.json()["protocols"]]
            assert got == top, datetime.fromtimestamp(at)


def test_category_totals_of_the_aggregate_query_are_the_files_sums(
    llama: tuple[Any, LiveServer], expected: Expected
) -> None:
    _, live = llama
    sums: dict[str, float] = defaultdict(float)
    for slug in expected.points.keys() | expected.listings.keys():
        if slug in AMBIGUOUS:
            continue
        # A protocol listed without a TVL (a null in every capture) adds nothing.
        value = expected.current(slug) if expected.points.get(slug) else 0.0
        sums[expected.listing(slug)[0]] += value
    with httpx.Client(base_url=live.base_url, timeout=60) as http:
        answer = http.post("/v2/query", json={"groupBy": "category"}).json()
        # Ingest tells the two protocols behind the ambiguous slug apart by category.
        ambiguous = [
            http.get(f"/v2/protocols/{slug}").json()
            for slug in ("meth-protocol", "meth-protocol-liquid-restaking")
        ]
    got = {group["key"]: group["measures"]["sum_tvl"] for group in answer["groups"]}
    for protocol in ambiguous:
        got[protocol["category"]] -= protocol["tvl"]
    assert got.keys() == sums.keys()
    for category, total in sums.items():
        assert got[category] == pytest.approx(total, rel=1e-9, abs=1e-6), category


# The latest capture of the snapshot file (2025-12-19T17:17:23-03:00).
LATEST_CAPTURE = "2025-12-19T20:17:23Z"


def test_aave_v3_analytics_and_the_risk_list_recompute(llama: tuple[Any, LiveServer]) -> None:
    """Issue 12's "done when": over the real captures, aave-v3's analytics and the risk list
    answer components that recompute to their scores (ADR 0033)."""
    from .test_analytics_api import recomputed

    _, live = llama
    with httpx.Client(base_url=live.base_url, timeout=60) as http:
        aave = http.get("/v2/protocols/aave-v3/analytics", params={"asOf": LATEST_CAPTURE})
        assert aave.status_code == 200, aave.text
        answer = aave.json()
        assert (answer["name"], answer["category"]) == ("Aave V3", "Lending")
        assert answer["oracles"] == {"count": 1, "names": ["Chainlink"]}
        assert answer["category_standing"]["rank"] == 1  # the largest lending protocol
        assert answer["category_standing"]["protocols"] > 400
        # Nine captures over eleven days: a drawdown and volatility, from real points.
        assert {d["window"]: d["value"] for d in answer["drawdowns"]}["all"] is not None
        assert recomputed(answer["risk"]) == pytest.approx(answer["risk"]["score"], rel=1e-12)

        listed = http.get(
            "/v2/analytics/risk", params={"asOf": LATEST_CAPTURE, "limit": 1_000}
        ).json()
        assert listed["total"] > 5_000
        for entry in listed["protocols"]:
            assert recomputed(entry["risk"]) == pytest.approx(entry["risk"]["score"], rel=1e-12)
        top_lending = http.get(
            "/v2/analytics/risk",
            params={"asOf": LATEST_CAPTURE, "category": "Lending", "sort": "tvl", "limit": 1},
        ).json()["protocols"]
        assert [(p["slug"], p["risk"]) for p in top_lending] == [("aave-v3", answer["risk"])]

        # A protocol with four years of daily history: every window is measured.
        kamino = http.get(
            "/v2/protocols/kamino-lend/analytics", params={"asOf": LATEST_CAPTURE}
        ).json()
        assert kamino["series"]["first_observed_at"] < datetime(2024, 1, 1).timestamp()
        assert {v["window"]: v["returns"] for v in kamino["volatility"]}["30d"] >= 25
        assert all(c["available"] for c in kamino["risk"]["components"])
        assert recomputed(kamino["risk"]) == pytest.approx(kamino["risk"]["score"], rel=1e-12)
