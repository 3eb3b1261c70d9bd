"""EVM collection: logs decoded per second (pure, and end to end through ingest) and block ->
event latency on a local chain.

    python bench/bench_evm.py [--logs 50000] [--repeat 5] [--latency-trades 20]

  decode     ``decode_log`` over ``--logs`` raw JSON-RPC logs (a V2 pair's Swap + Sync and
             the two ERC-20 Transfers of each trade, as a node returns them), one process
  end-to-end the collector's steps (``EvmCollector.step``: blocks, logs, decode, reserves,
             TVL observations, one ``record_chain_step`` per step on the writer thread into a
             SQLite event store) over the same logs, 10 trades a block, 100 blocks a step;
             the node is an in-memory JSON-RPC answering from the generated chain (no HTTP),
             so the figure is the collector's own cost
  latency    a real ganache (``examples/onchain/devnet.py``; needs ``make evm-tools``): a
             collector polling every 10 ms, ``--latency-trades`` swaps one at a time; from
             the swap's receipt to its ``evm_blocks_recorded`` entry in the event store

Medians over ``--repeat`` runs; latency median and p95.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import machine

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.httpx_json_rpc import HttpxJsonRpc
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.evm_collector import EvmCollector
from defi_realtime.application.evm_facts import (
    TRANSFER,
    V2_SWAP,
    V2_SYNC,
    ChainSpec,
    PoolSpec,
    TokenSpec,
    decode_log,
)
from defi_realtime.application.writer import IngestWriter
from defi_realtime.entrypoints.evm_settings import chain_specs

ROOT = Path(__file__).resolve().parents[1]
USDC, WETH = "0x" + "11" * 20, "0x" + "22" * 20
PAIRS = [f"0x{index:040x}" for index in range(1, 11)]
TRADER = "0x" + "77" * 20
TRADES_PER_BLOCK = 10


def topic(address: str) -> str:
    return "0x" + address[2:].rjust(64, "0")


def words(*values: int) -> str:
    return "0x" + "".join(v.to_bytes(32, "big").hex() for v in values)


def spec() -> ChainSpec:
    return ChainSpec(
        chain_id=31_337,
        name="Ethereum",
        rpc_urls=("memory://",),
        pools=tuple(
            PoolSpec(pair, f"bench-dex-{i}", f"Bench Dex {i}", "v2", USDC, WETH)
            for i, pair in enumerate(PAIRS)
        ),
        tokens=(TokenSpec(USDC, "USDC", 6, usd=1.0), TokenSpec(WETH, "WETH", 18)),
        confirmations=0,
        start_block=1,
        max_blocks_per_step=100,
    )


class GeneratedChain:
    """A chain of ``blocks`` blocks of ``TRADES_PER_BLOCK`` swaps each (4 logs a trade),
    answering the collector's JSON-RPC calls from memory."""

    def __init__(self, trades: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.blocks: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        reserves = {pair: [2_000_000 * 10**6, 1_000 * 10**18] for pair in PAIRS}
        parent = "0x" + "00" * 32
        count = (trades + TRADES_PER_BLOCK - 1) // TRADES_PER_BLOCK
        for number in range(1, count + 1):
            block_hash = f"0x{number:064x}"
            self.blocks.append(
                {
                    "number": hex(number),
                    "hash": block_hash,
                    "parentHash": parent,
                    "timestamp": hex(1_700_000_000 + 12 * number),
                }
            )
            parent = block_hash
            for tx in range(TRADES_PER_BLOCK):
                pair = rng.choice(PAIRS)
                usdc_in = rng.randint(1, 50_000) * 10**6
                r0, r1 = reserves[pair]
                out = usdc_in * 997 * r1 // (r0 * 1000 + usdc_in * 997)
                reserves[pair] = [r0 + usdc_in, r1 - out]
                base = {
                    "blockNumber": hex(number),
                    "blockHash": block_hash,
                    "transactionHash": f"0x{number:032x}{tx:032x}",
                    "transactionIndex": hex(tx),
                    "removed": False,
                }
                for index, (address, topics, data) in enumerate(
                    (
                        (USDC, [TRANSFER, topic(TRADER), topic(pair)], words(usdc_in)),
                        (WETH, [TRANSFER, topic(pair), topic(TRADER)], words(out)),
                        (pair, [V2_SYNC], words(*reserves[pair])),
                        (pair, [V2_SWAP, topic(TRADER), topic(TRADER)], words(usdc_in, 0, 0, out)),
                    )
                ):
                    self.logs.append(
                        {
                            **base,
                            "address": address,
                            "topics": topics,
                            "data": data,
                            "logIndex": hex(tx * 4 + index),
                        }
                    )

        self.by_block: dict[int, list[dict[str, Any]]] = {}
        for log in self.logs:
            self.by_block.setdefault(int(log["blockNumber"], 16), []).append(log)

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        if method == "eth_blockNumber":
            return hex(len(self.blocks))
        if method == "eth_getLogs":
            first, last = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            return [
                log for number in range(first, last + 1) for log in self.by_block.get(number, ())
            ]
        raise ValueError(method)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        # Blocks by number; eth_call (reserves before the start block): no contract yet.
        return [
            self.blocks[int(params[0], 16) - 1] if method == "eth_getBlockByNumber" else "0x"
            for method, params in calls
        ]

    async def aclose(self) -> None:
        return None


def sqlite_app(data_dir: str) -> tuple[DefiRealtime, IngestWriter]:
    """The application over a SQLite event store in ``data_dir``, and its started writer."""
    app = DefiRealtime(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(Path(data_dir) / "events.sqlite"),
        }
    )
    writer = IngestWriter(app)
    writer.start()
    return app, writer


def bench_decode(chain: GeneratedChain, repeat: int) -> tuple[float, float]:
    """Logs per second of wall time and per second of this process's CPU time (the
    second is what the machine's other load does not change much)."""
    chain_spec = spec()
    pools = {pool.address: pool for pool in chain_spec.pools}
    tokens = {token.address: token for token in chain_spec.tokens}
    rates, cpu_rates = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        decoded = [decode_log(log, pools, tokens) for log in chain.logs]
        rates.append(len(chain.logs) / (time.perf_counter() - started))
        cpu_rates.append(len(chain.logs) / (time.process_time() - cpu))
        assert all(fact is not None for fact in decoded)
    return statistics.median(rates), statistics.median(cpu_rates)


async def bench_end_to_end(chain: GeneratedChain, repeat: int) -> tuple[float, float]:
    rates, cpu_rates = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as data_dir:
            app, writer = sqlite_app(data_dir)
            try:
                collector = EvmCollector(spec(), chain, app, writer.call)
                # The first step also opens the chain's record. CPU time: the process's,
                # the writer thread's included.
                started, cpu = time.perf_counter(), time.process_time()
                facts = 0
                while True:
                    outcome = await collector.step()
                    facts += outcome.facts
                    if not outcome.recorded:
                        break
                elapsed = time.perf_counter() - started
                cpu_elapsed = time.process_time() - cpu
            finally:
                writer.stop()
                app.close()
            assert facts == len(chain.logs), (facts, len(chain.logs))
            rates.append(len(chain.logs) / elapsed)
            cpu_rates.append(len(chain.logs) / cpu_elapsed)
    return statistics.median(rates), statistics.median(cpu_rates)


def devnet_module() -> Any:
    path = ROOT / "examples" / "onchain" / "devnet.py"
    loaded = importlib.util.spec_from_file_location("onchain_devnet", path)
    assert loaded is not None
    assert loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    sys.modules["onchain_devnet"] = module
    loaded.loader.exec_module(module)
    return module


async def bench_latency(trades: int) -> list[float] | None:
    devnet = devnet_module()
    if devnet.tools_missing():
        print(f"latency skipped: {devnet.tools_missing()}")
        return None
    port = 18_645
    process = devnet.start_ganache(port)
    url = f"http://127.0.0.1:{port}"
    try:
        with devnet.Devnet(url, devnet.load_contracts()) as node:
            market = devnet.Market.deploy(node)
            setting = market.chain_setting(url, start_block=node.head())
            setting["poll_interval"] = 0.01
            setting["requests_per_second"] = 1000
            (chain_spec,) = chain_specs(json.dumps([setting]))
            with tempfile.TemporaryDirectory() as data_dir:
                app, writer = sqlite_app(data_dir)
                rpc = HttpxJsonRpc(chain_spec.rpc_urls, requests_per_second=1000)
                collector = EvmCollector(chain_spec, rpc, app, writer.call)
                task = asyncio.create_task(collector.run())
                log = EventStoreLog(app)
                latencies = []
                try:
                    for _ in range(trades):
                        await asyncio.to_thread(market.swap_usdc_for_weth, 1_000 * 10**6)
                        mined = time.perf_counter()
                        block = node.head()
                        deadline = mined + 10
                        while time.perf_counter() < deadline:
                            entries = await asyncio.to_thread(log.read, 0, 100_000)
                            if any(
                                e.kind == "evm_blocks_recorded"
                                and any(b["number"] == block for b in e.data["blocks"])
                                for e in entries.entries
                            ):
                                latencies.append(time.perf_counter() - mined)
                                break
                            await asyncio.sleep(0.002)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await rpc.aclose()
                    writer.stop()
                    app.close()
                return latencies
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency-trades", type=int, default=20)
    args = parser.parse_args()
    print(machine())
    chain = GeneratedChain(args.logs // 4)
    print(f"{len(chain.logs):,} logs in {len(chain.blocks):,} blocks")
    decode, decode_cpu = bench_decode(chain, args.repeat)
    print(
        f"decode      {decode:>10,.0f} logs/s, {decode_cpu:>10,.0f} per CPU second "
        f"(medians of {args.repeat})"
    )
    end_to_end, end_to_end_cpu = asyncio.run(bench_end_to_end(chain, args.repeat))
    print(
        f"end-to-end  {end_to_end:>10,.0f} logs/s, {end_to_end_cpu:>10,.0f} per CPU second "
        f"({decode_cpu / end_to_end_cpu:.1f}x the pure decode's CPU per log)"
    )
    if args.latency_trades:
        latencies = asyncio.run(bench_latency(args.latency_trades))
        if latencies:
            ordered = sorted(latencies)
            p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
            print(
                f"latency     block -> event median {statistics.median(ordered) * 1000:.1f} ms, "
                f"p95 {p95 * 1000:.1f} ms over {len(ordered)} trades"
            )


if __name__ == "__main__":
    main()
