"""Following one EVM chain: blocks behind a confirmation depth, their logs, reorgs.

Each step (``EvmCollector.step``):

1. asks the node for its head and for the last recorded block, the new blocks up to
   ``head - confirmations`` (at most ``max_blocks_per_step``), in ONE batched request;
2. if the last recorded block's hash changed, a reorg replaced it: walks back over the kept
   hashes (one batch) to the fork point and records ``BlocksOrphaned`` with the protocols'
   retractions, and stops there (the next step records the new branch);
3. checks that the new blocks chain by parent hash, fetches their logs for the watched
   addresses (one ``eth_getLogs``), refuses a log whose block hash is not the block fetched
   (the chain moved under the step: it is tried again), decodes them, moves the pools'
   reserves block by block and makes a ``tvl`` observation per protocol whose value moved;
4. records all of it in ONE transaction on the writer thread (``record_chain_step``): the
   blocks and facts on the chain's ``EvmChain``, the observations through the ingest path.

Resuming is reading the ``EvmChain``: its head is the last block recorded with its facts,
so a crash at any moment neither loses nor repeats a block (docs/adr/0048).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..domain.evm import EvmChain, ReorgTooDeep, tvl_key
from ..domain.observations import TOTAL
from .app import DefiRealtime
from .evm_facts import (
    ChainSpec,
    ChainStep,
    PoolSpec,
    TokenSpec,
    apply_fact,
    decode_log,
    pool_value,
    protocols_of,
)
from .ingest import build_batch
from .ports import JsonRpc

T = TypeVar("T")
log = logging.getLogger(__name__)

GET_RESERVES = "0x0902f1ac"  # getReserves()
BALANCE_OF = "0x70a08231"  # balanceOf(address)
DEX_CATEGORY = "Dexs"  # DeFiLlama's category of DEX protocols


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a step did: blocks recorded, blocks orphaned, facts recorded, the head."""

    recorded: int = 0
    orphaned: int = 0
    facts: int = 0
    head: int = -1


class EvmCollector:
    """Follows one chain and records what it sees (see the module docstring)."""

    def __init__(
        self,
        spec: ChainSpec,
        rpc: JsonRpc,
        app: DefiRealtime,
        on_writer: Callable[[Callable[[], Any]], Awaitable[Any]],
    ) -> None:
        self.spec = spec
        self.rpc = rpc
        self._app = app
        self._on_writer = on_writer
        self._pools: dict[str, PoolSpec] = {pool.address: pool for pool in spec.pools}
        self._tokens: dict[str, TokenSpec] = {token.address: token for token in spec.tokens}
        self._by_protocol = protocols_of(spec.pools)
        self._watched = spec.watched()

    async def _writer(self, function: Callable[[], T]) -> T:
        result: T = await self._on_writer(function)
        return result

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Step until cancelled (or ``stop`` is set), resting ``poll_interval`` whenever
        the chain has nothing new."""
        while stop is None or not stop.is_set():
            outcome = await self.step()
            if not outcome.recorded and not outcome.orphaned:
                await asyncio.sleep(self.spec.poll_interval)

    async def step(self) -> StepOutcome:
        chain_id = self.spec.chain_id
        chain = await self._writer(lambda: self._app.evm_chain(chain_id))
        if chain is None:
            await self._open()
            chain = await self._writer(lambda: self._app.evm_chain(chain_id))
            assert chain is not None
        head = int(await self.rpc.call("eth_blockNumber", []), 16)
        target = head - self.spec.confirmations
        recorded_head = chain.head
        last = min(target, recorded_head + self.spec.max_blocks_per_step)
        numbers = list(range(max(recorded_head, self.spec.start_block), last + 1))
        if recorded_head < self.spec.start_block and not numbers:
            return StepOutcome(head=recorded_head)
        blocks = await self._blocks(numbers or [recorded_head])
        if recorded_head >= self.spec.start_block:
            known = chain.recorded_hash(recorded_head)
            if blocks[0] is None or blocks[0]["hash"] != known:
                return await self._orphan(chain)
            blocks = blocks[1:]
        new = [block for block in blocks if block is not None]
        if len(new) != len(blocks) or not new:
            return StepOutcome(head=recorded_head)
        parent = chain.recorded_hash(recorded_head)
        for block in new:
            if parent is not None and block["parentHash"] != parent:
                return StepOutcome(head=recorded_head)  # moved under us: again next step
            parent = block["hash"]
        return await self._record(chain, new)

    async def _blocks(self, numbers: Sequence[int]) -> list[dict[str, Any] | None]:
        answers = await self.rpc.batch(
            [("eth_getBlockByNumber", [hex(number), False]) for number in numbers]
        )
        return [answer if isinstance(answer, dict) else None for answer in answers]

    async def _open(self) -> None:
        """Open the chain's record at ``start_block`` with each pool's reserves before it."""
        spec = self.spec
        reserves: dict[str, list[str]] = {}
        if spec.start_block > 0 and spec.pools:
            at = hex(spec.start_block - 1)
            calls: list[tuple[str, Sequence[Any]]] = []
            for pool in spec.pools:
                if pool.kind == "v2":
                    calls.append(("eth_call", [{"to": pool.address, "data": GET_RESERVES}, at]))
                else:
                    holder = pool.address[2:].rjust(64, "0")
                    for token in (pool.token0, pool.token1):
                        data = BALANCE_OF + holder
                        calls.append(("eth_call", [{"to": token, "data": data}, at]))
            answers = iter(await self.rpc.batch(calls))
            for pool in spec.pools:
                if pool.kind == "v2":
                    raw = _hex_bytes(next(answers))
                    pair = (_word(raw, 0), _word(raw, 1))
                else:
                    pair = (
                        _word(_hex_bytes(next(answers)), 0),
                        _word(_hex_bytes(next(answers)), 0),
                    )
                reserves[pool.address] = [str(pair[0]), str(pair[1])]
        step = ChainStep(
            chain_id=spec.chain_id,
            source=spec.source,
            opening=lambda: EvmChain.open(
                spec.chain_id, spec.name, spec.start_block, reserves=reserves
            ),
        )
        await self._writer(lambda: self._app.record_chain_step(step))

    async def _orphan(self, chain: EvmChain) -> StepOutcome:
        """Find the fork point among the kept blocks and retract everything after it."""
        kept = sorted(chain.hashes, reverse=True)
        answers = await self._blocks(kept)
        fork = None
        for number, block in zip(kept, answers, strict=True):
            if block is not None and block["hash"] == chain.hashes[number]:
                fork = number
                break
        if fork is None:
            oldest = kept[-1] if kept else chain.head
            if oldest > self.spec.start_block:
                raise ReorgTooDeep(
                    f"chain {self.spec.chain_id}: no kept block survived the reorg "
                    f"(kept {len(kept)} from {oldest})"
                )
            fork = self.spec.start_block - 1
        orphaned = chain.head - fork
        step = ChainStep(
            chain_id=self.spec.chain_id, source=f"{self.spec.source}:reorg", orphan_from=fork + 1
        )
        await self._writer(lambda: self._app.record_chain_step(step))
        log.warning(
            "chain %s: reorg, %d block(s) from %d orphaned and retracted",
            self.spec.chain_id,
            orphaned,
            fork + 1,
        )
        return StepOutcome(orphaned=orphaned, head=fork)

    async def _record(self, chain: EvmChain, blocks: list[dict[str, Any]]) -> StepOutcome:
        first, last = int(blocks[0]["number"], 16), int(blocks[-1]["number"], 16)
        by_number = {int(block["number"], 16): block for block in blocks}
        raw_logs: list[Mapping[str, Any]] = []
        if self._watched:
            raw_logs = await self.rpc.call(
                "eth_getLogs",
                [{"fromBlock": hex(first), "toBlock": hex(last), "address": self._watched}],
            )
        facts: list[dict[str, Any]] = []
        for raw in raw_logs:
            if raw.get("removed"):
                continue
            block = by_number.get(int(raw["blockNumber"], 16))
            if block is None or raw["blockHash"] != block["hash"]:
                return StepOutcome(head=chain.head)  # a log of another branch: again
            fact = decode_log(raw, self._pools, self._tokens)
            if fact is not None:
                facts.append(fact)
        facts.sort(key=lambda fact: (fact["block"], fact["log_index"]))
        step = self._tvl_step(chain, blocks, facts)
        await self._writer(lambda: self._app.record_chain_step(step))
        return StepOutcome(recorded=len(blocks), facts=len(facts), head=last)

    def _tvl_step(
        self, chain: EvmChain, blocks: list[dict[str, Any]], facts: list[dict[str, Any]]
    ) -> ChainStep:
        """The step recording ``blocks``: reserves after each block that moved a pool, and
        a TVL observation of each protocol whose pools moved (at the block's timestamp)."""
        spec = self.spec
        reserves: dict[str, tuple[int, int]] = {}
        for address in self._pools:
            held = chain.reserves(address)
            if held is not None:
                reserves[address] = held
        chains = [spec.name, TOTAL] if spec.record_total else [spec.name]
        last_tvl = {
            protocol: chain.tvl(tvl_key(protocol, spec.name)) for protocol in self._by_protocol
        }
        facts_by_block: dict[int, list[dict[str, Any]]] = {}
        for fact in facts:
            facts_by_block.setdefault(int(fact["block"]), []).append(fact)
        moved_reserves: dict[int, dict[str, list[str]]] = {}
        tvl: list[dict[str, Any]] = []
        observations: list[dict[str, Any]] = []
        for block in blocks:
            number = int(block["number"], 16)
            moved = {
                pool
                for fact in facts_by_block.get(number, ())
                if (pool := apply_fact(reserves, fact, self._pools)) is not None
            }
            if not moved:
                continue
            moved_reserves[number] = {p: [str(reserves[p][0]), str(reserves[p][1])] for p in moved}
            timestamp = float(int(block["timestamp"], 16))
            for protocol, pools in self._by_protocol.items():
                if not any(pool.address in moved for pool in pools):
                    continue
                values = [
                    pool_value(reserves[pool.address], pool, self._tokens)
                    for pool in pools
                    if pool.address in reserves
                ]
                known = [value for value in values if value is not None]
                if not known:
                    continue
                value = sum(known)
                if value == last_tvl.get(protocol):
                    continue
                last_tvl[protocol] = value
                for chain_name in chains:
                    tvl.append(
                        {
                            "protocol": protocol,
                            "chain": chain_name,
                            "value": value,
                            "observed_at": timestamp,
                            "block": number,
                        }
                    )
                    observations.append(
                        {
                            "protocol": protocol,
                            "metric": "tvl",
                            "chain": chain_name,
                            "value": value,
                            "observed_at": timestamp,
                            "source": spec.source,
                            "name": pools[0].protocol_name,
                            "category": DEX_CATEGORY,
                        }
                    )
        return ChainStep(
            chain_id=spec.chain_id,
            source=spec.source,
            blocks=[
                {
                    "number": int(block["number"], 16),
                    "hash": block["hash"],
                    "parent_hash": block["parentHash"],
                    "timestamp": int(block["timestamp"], 16),
                }
                for block in blocks
            ],
            facts=facts,
            reserves=moved_reserves,
            tvl=tvl,
            batch=build_batch(observations) if observations else None,
        )


def _hex_bytes(raw: Any) -> bytes:
    text = str(raw or "0x")
    return bytes.fromhex(text[2:]) if len(text) > 2 else b""


def _word(data: bytes, index: int) -> int:
    chunk = data[32 * index : 32 * index + 32]
    return int.from_bytes(chunk, "big") if chunk else 0
