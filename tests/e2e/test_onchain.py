"""EVM collectors against a real local chain (ganache), never a mock (docs/onchain.md).

One ganache for the module; contracts from ``examples/onchain/contracts`` (compiled with
solcjs; the committed build is checked against a fresh compile). The scenarios deploy two
tokens, a V2 pair and a V3-style pool, trade, and force a reorg with ``evm_snapshot`` /
``evm_revert`` / ``evm_mine``: the same heights, other blocks.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.httpx_json_rpc import HttpxJsonRpc, NodesUnavailable
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.evm_collector import EvmCollector
from defi_realtime.application.writer import IngestWriter
from defi_realtime.entrypoints.evm_settings import chain_specs
from defi_realtime.entrypoints.settings import Settings
from tests.e2e.conftest import start_server, wait_for
from tests.evm_devnet import devnet_module, free_port, local_chain
from tests.services import missing

SLUG = "local-swap-v2"
WAIT = 15.0


@pytest.fixture(scope="module")
def devnet() -> ModuleType:
    return devnet_module()


@pytest.fixture(scope="module")
def chain_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_chain(tmp_path_factory.mktemp("ganache") / "ganache.log") as url:
        yield url


@pytest.fixture
def node(devnet: ModuleType, chain_url: str) -> Iterator[Any]:
    with devnet.Devnet(chain_url, devnet.load_contracts()) as client:
        yield client


def usd_tvl(market: Any) -> float:
    """The V2 pair's TVL as the collector prices it: twice the USDC leg ($1, 6 decimals)."""
    r0, r1 = market.reserves()
    usdc = r0 if market.usdc == market.token0 else r1
    return 2 * usdc / 10**6


def test_the_committed_build_is_what_the_sources_compile_to(
    devnet: ModuleType, tmp_path: Path
) -> None:
    why = devnet.tools_missing()
    if why is not None:
        missing(f"solcjs cannot run: {why}")  # skips locally, fails under CI=true
    build = json.loads(devnet.BUILD.read_text())
    assert build["sources_sha256"] == devnet.sources_digest()
    assert devnet.compile_contracts(tmp_path) == build["contracts"]


def test_a_trade_shows_in_protocols_and_a_reorg_retracts_it_everywhere(
    devnet: ModuleType, chain_url: str, node: Any, tmp_path: Path
) -> None:
    market = devnet.Market.deploy(node)
    market.swap_usdc_for_weth(10_000 * 10**6)
    before = usd_tvl(market)
    setting = market.chain_setting(chain_url, start_block=node.head() - 8)
    with (
        start_server(tmp_path / "data", evm_chains=json.dumps([setting])) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as http,
    ):

        def tvl() -> Any:
            response = http.get(f"/v2/protocols/{SLUG}")
            return response.json().get("tvl") if response.status_code == 200 else None

        wait_for(tvl, lambda value: value == before, WAIT)
        view = http.get(f"/v2/protocols/{SLUG}").json()
        assert view["chainTvls"]["Ganache"] == before
        assert view["category"] == "Dexs"

        snapshot = node.snapshot()
        market.swap_usdc_for_weth(200_000 * 10**6)
        orphaned_tvl = usd_tvl(market)
        wait_for(tvl, lambda value: value == orphaned_tvl, WAIT)

        # The reorg: back below the head, then more blocks than were orphaned at the
        # same heights (the collector follows the longer chain).
        node.revert(snapshot)
        node.mine(3)
        # Every read model reflects it: the hot projection (/v2/protocols) ...
        wait_for(tvl, lambda value: value == before, WAIT)
        listing = http.get("/v2/protocols").json()
        rows = listing["protocols"] if isinstance(listing, dict) else listing
        assert [row["tvl"] for row in rows if row["slug"] == SLUG] == [before]
        # ... the history (the series' newest value at each time is the retraction) ...
        points = wait_for(
            lambda: http.get(f"/v2/protocols/{SLUG}/metrics").json()["points"],
            lambda found: found and found[-1]["value"] == before,
            WAIT,
        )
        assert orphaned_tvl not in [point["value"] for point in points]
        # ... and the stream: a replay from position 0 ends on the restored value, flagged.
        with connect(server.ws_url, open_timeout=5) as ws:
            ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "channel": "protocols",
                        "params": {"protocolIds": [SLUG]},
                        "since": 0,
                    }
                )
            )
            values = []
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                frame = json.loads(ws.recv(timeout=WAIT))
                if frame["type"] == "update":
                    values.append(frame["data"]["value"])
                    if values[-1] == before and orphaned_tvl in values:
                        break
            assert values[-1] == before, values
            assert orphaned_tvl in values, values

    # The log: the orphaned blocks' swap was recorded, then retracted by block hash.
    app = DefiRealtime(env=Settings(data_dir=tmp_path / "data").event_store_env)
    try:
        entries = EventStoreLog(app).read(0, 10_000).entries
    finally:
        app.close()
    orphaned = [e for e in entries if e.kind == "evm_blocks_orphaned"]
    assert len(orphaned) == 1
    gone = {block["hash"] for block in orphaned[0].data["blocks"]}
    swaps = [
        fact
        for entry in entries
        if entry.kind == "evm_blocks_recorded"
        for fact in entry.data["facts"]
        if fact["kind"] == "swap"
    ]
    retracted = [swap for swap in swaps if swap["block_hash"] in gone]
    assert len(retracted) == 1
    assert str(200_000 * 10**6) in (retracted[0]["amount0_in"], retracted[0]["amount1_in"])
    retractions = [e for e in entries if e.kind == "metric" and e.data.get("retracted")]
    assert {(e.key, e.data["chain"], e.data["value"]) for e in retractions} == {
        (SLUG, "Ganache", before),
        (SLUG, "total", before),
    }


async def test_resumes_from_the_last_recorded_block_exactly_once(
    devnet: ModuleType, chain_url: str, node: Any, tmp_path: Path
) -> None:
    start = node.head() + 1
    market = devnet.Market.deploy(node)
    market.swap_usdc_for_weth(1_000 * 10**6)
    market.swap_v3(500 * 10**6, 10**17)
    setting = market.chain_setting(chain_url, start_block=start)
    setting["max_blocks_per_step"] = 4  # several steps, so a "crash" lands between two
    (spec,) = chain_specs(json.dumps([setting]))
    env = Settings(data_dir=tmp_path).event_store_env

    async def collect(steps: int | None) -> tuple[int, dict[str, float]]:
        app = DefiRealtime(env=env)
        writer = IngestWriter(app)
        writer.start()
        rpc = HttpxJsonRpc(spec.rpc_urls)
        try:
            collector = EvmCollector(spec, rpc, app, writer.call)
            done = 0
            while steps is None or done < steps:
                outcome = await collector.step()
                done += 1
                if steps is None and not outcome.recorded:
                    break
            chain = await writer.call(lambda: app.evm_chain(spec.chain_id))
            assert chain is not None
            tvl = {
                slug: app.get_protocol(slug).current_value("tvl", "Ganache") or 0.0
                for slug in ("local-swap-v2", "local-swap-v3")
                if chain.head > start + 8
            }
            return chain.head, tvl
        finally:
            await rpc.aclose()
            writer.stop()
            app.close()

    first_head, _ = await collect(2)  # then the process "dies"
    assert first_head == start + 7
    head, tvl = await collect(None)  # a new process resumes
    assert head == node.head()
    assert tvl["local-swap-v2"] == usd_tvl(market)
    # The V3-style pool's TVL follows its token balances (Transfers): USDC in, x2.
    assert tvl["local-swap-v3"] == 2 * (2_000_000 + 500)

    app = DefiRealtime(env=env)
    try:
        entries = EventStoreLog(app).read(0, 10_000).entries
    finally:
        app.close()
    blocks = [
        b["number"] for e in entries if e.kind == "evm_blocks_recorded" for b in e.data["blocks"]
    ]
    assert blocks == list(range(start, head + 1))  # every block once, in order
    swaps = [
        (fact["version"], fact["tx_hash"])
        for e in entries
        if e.kind == "evm_blocks_recorded"
        for fact in e.data["facts"]
        if fact["kind"] == "swap"
    ]
    assert [version for version, _ in swaps] == ["v2", "v3"]
    assert len(set(swaps)) == 2


async def test_json_rpc_fails_over_and_keeps_its_budget(chain_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rpc = HttpxJsonRpc([dead, chain_url], requests_per_second=4, timeout=2)
    try:
        started = time.monotonic()
        answers = [await rpc.call("eth_chainId", []) for _ in range(5)]
        elapsed = time.monotonic() - started
        assert answers == ["0x539"] * 5  # 1337
        # The dead URL was tried once, then the live one kept: 6 requests, and the sixth
        # waited for the one-second window (4 a second).
        assert rpc.requests == 6
        assert elapsed >= 0.9
        batch = await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
        assert batch[0] == "0x539"
        assert int(batch[1], 16) >= 0
    finally:
        await rpc.aclose()
    nowhere = HttpxJsonRpc([dead], timeout=2)
    try:
        with pytest.raises(NodesUnavailable, match=dead):
            await asyncio.wait_for(nowhere.call("eth_chainId", []), 10)
    finally:
        await nowhere.aclose()


def test_a_sandwich_mined_in_one_block_streams_on_mev_and_is_listed_by_the_route(
    devnet: ModuleType, chain_url: str, node: Any, tmp_path: Path
) -> None:
    """Three trades (two txs each: pay in, swap) pending while mining is stopped, ordered
    by gas price (front-run, victim, back-run), then mined as ONE block."""
    market = devnet.Market.deploy(node)
    bot, victim = node.accounts[1], node.accounts[2]
    for trader, amount in ((bot, 100_000), (victim, 300_000)):
        node.send("TestToken", market.usdc, "transfer(address,uint256)", trader, amount * 10**6)
    r0, r1 = market.reserves()
    usdc_is_0 = market.usdc == market.token0
    pool = {"usdc": r0 if usdc_is_0 else r1, "weth": r1 if usdc_is_0 else r0}

    def trade(token_in: str, amount_in: int) -> int:
        token_out = "weth" if token_in == "usdc" else "usdc"
        out = amount_in * 997 * pool[token_out] // (pool[token_in] * 1000 + amount_in * 997)
        pool[token_in] += amount_in
        pool[token_out] -= out
        return out

    def pending(sender: str, contract: str, to: str, signature: str, *args: Any, gwei: int) -> str:
        selector = node.contracts[contract]["methods"][signature]
        data = "0x" + selector + "".join(devnet._word(a) for a in args)
        tx = {"from": sender, "to": to, "data": data, "gas": hex(250_000)}
        tx["gasPrice"] = hex(gwei * 10**9)
        return str(node.rpc("eth_sendTransaction", tx))

    def swap(trader: str, token_in: str, amount_in: int, gwei: int) -> str:
        out = trade(token_in, amount_in)
        token = market.usdc if token_in == "usdc" else market.weth
        pending(trader, "TestToken", token, "transfer(address,uint256)", market.pair,
                amount_in, gwei=gwei)  # fmt: skip
        weth_is_0 = not usdc_is_0
        wants_weth = token_in == "usdc"
        args = (out, 0) if wants_weth == weth_is_0 else (0, out)
        pending(trader, "MiniPair", market.pair, "swap(uint256,uint256,address)", *args,
                trader, gwei=gwei)  # fmt: skip
        return str(out)

    setting = market.chain_setting(chain_url, start_block=node.head() + 1)
    with (
        start_server(tmp_path / "data", evm_chains=json.dumps([setting])) as server,
        httpx.Client(base_url=server.base_url, timeout=10, headers=server.headers) as http,
    ):
        with connect(server.ws_url, open_timeout=5) as ws:
            ws.send(json.dumps({"type": "subscribe", "channel": "mev"}))
            assert json.loads(ws.recv(timeout=WAIT))["type"] == "subscribed"
            node.rpc("miner_stop")
            try:
                front_usdc = 100_000 * 10**6
                bought = int(swap(bot, "usdc", front_usdc, gwei=30))
                swap(victim, "usdc", 300_000 * 10**6, gwei=20)
                proceeds = int(swap(bot, "weth", bought, gwei=10))
            finally:
                node.rpc("miner_start")
            node.mine(1)  # whatever ganache left pending, in the same or the next block
            mined = time.monotonic()
            frame = json.loads(ws.recv(timeout=WAIT))
            streamed = time.monotonic() - mined
        assert (frame["type"], frame["data"]["kind"]) == ("mev", "sandwich"), frame
        found = wait_for(
            lambda: http.get("/v2/analytics/mev").json(),
            lambda answer: answer.get("totals", {}).get("sandwiches") == 1,
            WAIT,
        )
        latency = time.monotonic() - mined
        assert frame["data"]["key"] == found["detections"][0]["key"]
        [sandwich] = found["detections"]
        assert sandwich["kind"] == "sandwich"
        assert (sandwich["pool"], sandwich["actor"]) == (market.pair, bot.lower())
        assert sandwich["victim"] == victim.lower()
        assert sandwich["quoteToken"] == market.usdc
        assert int(sandwich["profit"]) == proceeds - front_usdc > 0
        assert sandwich["profitUsd"] == pytest.approx((proceeds - front_usdc) / 10**6)
        assert found["totals"]["profitUsd"] == pytest.approx(sandwich["profitUsd"])
        by_actor = http.get("/v2/analytics/mev", params={"actor": victim}).json()
        assert by_actor["totals"]["detections"] == 0
        refused = http.get("/v2/analytics/mev", params={"fromBlock": "9", "toBlock": "3"})
        assert refused.status_code == 400, refused.text
        print(f"block mined -> mev frame {streamed * 1000:.0f} ms, route {latency * 1000:.0f} ms")


def test_wallets_that_trade_are_ranked_and_an_mev_rule_fires_through_the_api(
    devnet: ModuleType, chain_url: str, node: Any, tmp_path: Path
) -> None:
    """An early buyer sells into a later buyer's rise, a bot sandwiches a victim: the
    smart-money route ranks the early buyer first with the features behind it, and an
    alert rule on the bot's sandwiches, created through the API, fires."""
    market = devnet.Market.deploy(node)
    early, late, bot, victim = node.accounts[3:7]
    for trader in (early, late, bot, victim):
        node.send("TestToken", market.usdc, "transfer(address,uint256)", trader, 10**6 * 10**6)
    usdc_is_0 = market.usdc == market.token0

    def reserves_now() -> dict[str, int]:
        r0, r1 = market.reserves()
        return {"usdc": r0 if usdc_is_0 else r1, "weth": r1 if usdc_is_0 else r0}

    def swap_tx(
        trader: str,
        token_in: str,
        amount_in: int,
        *,
        gwei: int | None = None,
        pending: dict[str, int] | None = None,
    ) -> int:
        """Pay the pair, then call ``swap`` for what the constant product gives: mined at
        once, or pending at ``gwei`` while mining is stopped (``pending``: the reserves
        the earlier pending trades will have left)."""
        reserves = reserves_now() if pending is None else pending
        token_out = "weth" if token_in == "usdc" else "usdc"
        out = amount_in * 997 * reserves[token_out] // (reserves[token_in] * 1000 + amount_in * 997)
        reserves[token_in] += amount_in
        reserves[token_out] -= out
        token = market.usdc if token_in == "usdc" else market.weth
        weth_is_0 = not usdc_is_0
        args = (out, 0) if (token_in == "usdc") == weth_is_0 else (0, out)
        calls = [
            ("TestToken", token, "transfer(address,uint256)", market.pair, amount_in),
            ("MiniPair", market.pair, "swap(uint256,uint256,address)", *args, trader),
        ]
        for contract, to, signature, *call_args in calls:
            if gwei is None:
                node.send(contract, to, signature, *call_args, sender=trader)
            else:
                selector = node.contracts[contract]["methods"][signature]
                data = "0x" + selector + "".join(devnet._word(a) for a in call_args)
                tx = {"from": trader, "to": to, "data": data, "gas": hex(250_000)}
                node.rpc("eth_sendTransaction", {**tx, "gasPrice": hex(gwei * 10**9)})
        return out

    setting = market.chain_setting(chain_url, start_block=node.head() + 1)
    rule_body = {
        "name": "bot sandwiches",
        "target": {"chain_id": devnet.CHAIN_ID},
        "condition": {"kind": "mev", "actor": bot, "detection": "sandwich", "min_profit_usd": 1},
        "channels": [{"kind": "websocket"}],
    }
    with (
        start_server(tmp_path / "data", evm_chains=json.dumps([setting])) as server,
        httpx.Client(base_url=server.base_url, timeout=10, headers=server.headers) as http,
    ):
        refused = http.post(
            "/v2/alerts", json={**rule_body, "condition": {"kind": "mev", "pool": "0x12"}}
        )
        assert refused.status_code == 400, refused.text
        assert "condition.pool" in refused.json()["error"]["message"]
        mismatched = http.post("/v2/alerts", json={**rule_body, "target": {"protocol": SLUG}})
        assert mismatched.status_code == 400, mismatched.text
        created = http.post("/v2/alerts", json=rule_body)
        assert created.status_code == 200, created.text
        rule_id = created.json()["id"]

        bought = swap_tx(early, "usdc", 50_000 * 10**6)
        swap_tx(late, "usdc", 400_000 * 10**6)
        sold_for = swap_tx(early, "weth", bought)
        block = reserves_now()
        node.rpc("miner_stop")
        try:
            front = swap_tx(bot, "usdc", 100_000 * 10**6, gwei=30, pending=block)
            swap_tx(victim, "usdc", 300_000 * 10**6, gwei=20, pending=block)
            swap_tx(bot, "weth", front, gwei=10, pending=block)
        finally:
            node.rpc("miner_start")
        node.mine(1)

        ranked = wait_for(
            lambda: http.get("/v2/analytics/smart-money").json(),
            lambda answer: answer.get("walletsRanked") == 4,
            WAIT,
        )
        order = [wallet["wallet"] for wallet in ranked["wallets"]]
        assert order[:2] == [early.lower(), bot.lower()], ranked
        top = ranked["wallets"][0]
        features = top["features"]
        assert features["realised_pnl_usd"] == pytest.approx((sold_for - 50_000 * 10**6) / 10**6)
        assert features["realised_pnl_usd"] > 0
        assert (features["win_rate"], features["closed_trades"], features["trades"]) == (1, 1, 2)
        assert features["early_entry_share"] == 1.0
        assert features["pools"] == [market.pair]
        terms = top["defaultTerms"]
        assert top["score"] == pytest.approx(
            100 * terms["confidence"] * (terms["win_rate"] + terms["early_entry"] + terms["roi"])
        )
        assert ranked["model"] is None
        one = http.get("/v2/analytics/smart-money", params={"wallet": late}).json()
        # Late holds what it bought (no closed trade): ranked with the victim, at 0.
        place = order.index(late.lower()) + 1
        assert place in (3, 4)
        assert [(w["wallet"], w["rank"], w["score"]) for w in one["wallets"]] == [
            (late.lower(), place, 0.0)
        ]
        assert one["wallets"][0]["features"]["unrealised_pnl_usd"] > 0
        assert http.get("/v2/analytics/smart-money", params={"ranking": "model"}).status_code == 409
        assert http.get("/v2/analytics/smart-money", params={"chainId": "5"}).status_code == 404

        rule = wait_for(
            lambda: http.get(f"/v2/alerts/{rule_id}").json(),
            lambda found: found.get("firing") == "firing",
            WAIT,
        )
        assert rule["condition"]["actor"] == bot.lower()


def swap_now(node: Any, market: Any, trader: str, token_in: str, amount_in: int) -> int:
    """``trader`` pays the V2 pair ``amount_in`` of ``token_in`` (usdc or weth) and swaps
    it for what the constant product gives; mined at once. What it got."""
    r0, r1 = market.reserves()
    usdc_is_0 = market.usdc == market.token0
    reserves = {"usdc": r0 if usdc_is_0 else r1, "weth": r1 if usdc_is_0 else r0}
    token_out = "weth" if token_in == "usdc" else "usdc"
    out = amount_in * 997 * reserves[token_out] // (reserves[token_in] * 1000 + amount_in * 997)
    token = market.usdc if token_in == "usdc" else market.weth
    args = (out, 0) if (token_in == "usdc") == (not usdc_is_0) else (0, out)
    node.send(
        "TestToken", token, "transfer(address,uint256)", market.pair, amount_in, sender=trader
    )
    node.send(
        "MiniPair", market.pair, "swap(uint256,uint256,address)", *args, trader, sender=trader
    )
    return int(out)


def test_a_top_wallets_trade_streams_on_smart_money_and_an_outsiders_does_not(
    devnet: ModuleType, chain_url: str, node: Any, tmp_path: Path
) -> None:
    """An early buyer sells into a later buyer's rise: ranked first. A subscriber to the
    top 1 gets the early buyer's next trade and not the later buyer's (mined before it);
    a subscriber to the top 2 gets both, so the first's filter, not a lag, left it out."""
    market = devnet.Market.deploy(node)
    early, late = node.accounts[7:9]
    for trader in (early, late):
        node.send("TestToken", market.usdc, "transfer(address,uint256)", trader, 10**6 * 10**6)
    setting = market.chain_setting(chain_url, start_block=node.head() + 1)
    refresh = 0.3
    with (
        start_server(
            tmp_path / "data", evm_chains=json.dumps([setting]), smart_money_ws_refresh=refresh
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=10, headers=server.headers) as http,
    ):
        bought = swap_now(node, market, early, "usdc", 50_000 * 10**6)
        swap_now(node, market, late, "usdc", 400_000 * 10**6)
        swap_now(node, market, early, "weth", bought)
        ranked = wait_for(
            lambda: http.get("/v2/analytics/smart-money").json(),
            lambda answer: answer.get("walletsRanked") == 2,
            WAIT,
        )
        assert [w["wallet"] for w in ranked["wallets"]] == [early.lower(), late.lower()]
        time.sleep(3 * refresh)  # the hub's ranking is refreshed from the same moves
        with (
            connect(server.ws_url, open_timeout=5) as top1,
            connect(server.ws_url, open_timeout=5) as top2,
        ):
            for ws, top in ((top1, 1), (top2, 2)):
                ws.send(json.dumps({"type": "subscribe", "channel": "smart-money",
                                    "params": {"top": top}}))  # fmt: skip
                assert json.loads(ws.recv(timeout=WAIT))["type"] == "subscribed"
            swap_now(node, market, late, "usdc", 1_000 * 10**6)  # outside the top 1
            swap_now(node, market, early, "usdc", 2_000 * 10**6)
            mined = time.monotonic()
            frame = json.loads(top1.recv(timeout=WAIT))
            streamed = time.monotonic() - mined
            both: list[tuple[str, int, str]] = []
            while len(both) < 2:
                got = json.loads(top2.recv(timeout=WAIT))
                both += [(t["wallet"], t["rank"], t["amountPaid"]) for t in got["data"]["trades"]]
        assert (frame["type"], frame["channel"], frame["data"]["retracted"]) == (
            "smart-money", "smart-money", False
        )  # fmt: skip
        assert [(t["wallet"], t["rank"]) for t in frame["data"]["trades"]] == [(early.lower(), 1)]
        [trade] = frame["data"]["trades"]
        assert (trade["pool"], trade["tokenPaid"], trade["tokenGot"]) == (
            market.pair, market.usdc, market.weth
        )  # fmt: skip
        assert trade["amountPaid"] == str(2_000 * 10**6)
        assert both == [
            (late.lower(), 2, str(1_000 * 10**6)),
            (early.lower(), 1, str(2_000 * 10**6)),
        ]
        # Collector poll 0.2 s, node follower 0.05 s: well within the bound on a busy box.
        assert streamed < 5.0, streamed
        print(f"block mined -> smart-money frame {streamed * 1000:.0f} ms")
