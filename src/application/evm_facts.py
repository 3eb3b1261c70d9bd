"""EVM logs as facts: what a collector is configured to watch, how a log decodes, what a
pool is worth.

Decoding is by hand over the raw JSON-RPC log (``topics`` and ``data`` as hex): every field
of the six events read here is one 32-byte word, so slicing and ``int.from_bytes`` is all
it takes, at a fraction of a general ABI decoder's cost (docs/benchmarks.md). Amounts are
kept as decimal strings: uint256 values do not fit a float or a 64-bit JSON integer.

A swap fact carries what a sandwich or arbitrage detector needs without a lookup: block
number and hash, transaction hash and index, log index, pool, protocol, sender and
recipient, and the amounts in and out of each of the pool's tokens (V3's signed amounts are
split the same way: positive is into the pool).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..domain.evm import EvmChain
from .ingest import IngestBatch

# topic0 = keccak256 of the event signature.
TRANSFER: Final = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
V2_SYNC: Final = "0x1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1"
V2_SWAP: Final = "0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822"
V2_MINT: Final = "0x4c209b5fc8ad50758f13e2e1088ba56a560dff690a1c6fef26394f4c03821c4f"
V2_BURN: Final = "0xdccd412f0b1252819cb1fd330b93224ca42612892bb3f4f789976e6d81936496"
V3_SWAP: Final = "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67"
SIGNATURES: Final[Mapping[str, str]] = {
    TRANSFER: "Transfer(address,address,uint256)",
    V2_SYNC: "Sync(uint112,uint112)",
    V2_SWAP: "Swap(address,uint256,uint256,uint256,uint256,address)",
    V2_MINT: "Mint(address,uint256,uint256)",
    V2_BURN: "Burn(address,uint256,uint256,address)",
    V3_SWAP: "Swap(address,address,int256,int256,uint160,uint128,int24)",
}
_TWO_255: Final = 1 << 255
_TWO_256: Final = 1 << 256

PoolKind = Literal["v2", "v3"]


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """An ERC-20 token the collector watches. ``usd`` prices it at a fixed value (a
    stable coin); a token without one is valued through its pool (see ``pool_value``)."""

    address: str
    symbol: str
    decimals: int = 18
    usd: float | None = None


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A DEX pool: its protocol (slug and name), its kind and its two tokens' addresses."""

    address: str
    protocol: str
    protocol_name: str
    kind: PoolKind
    token0: str
    token1: str


@dataclass(frozen=True, slots=True)
class ChainSpec:
    """One chain a collector follows (the ``EVM_CHAINS`` setting, one entry)."""

    chain_id: int
    name: str  # the chain's name as observations carry it (``Ethereum``)
    rpc_urls: tuple[str, ...]
    pools: tuple[PoolSpec, ...]
    tokens: tuple[TokenSpec, ...]
    confirmations: int = 12
    start_block: int = 0
    max_blocks_per_step: int = 100
    requests_per_second: float = 20.0
    poll_interval: float = 2.0
    # Also record the protocols' ``total`` TVL (they are collected on this chain only).
    record_total: bool = True

    @property
    def source(self) -> str:
        return f"evm:{self.chain_id}"

    def watched(self) -> list[str]:
        """Addresses whose logs the collector asks for: pools, then tokens."""
        return list(
            dict.fromkeys([p.address for p in self.pools] + [t.address for t in self.tokens])
        )


@dataclass(frozen=True, slots=True)
class ChainStep:
    """What one collector step records, in one transaction (``DefiRealtime.record_chain_step``)."""

    chain_id: int
    source: str
    opening: Callable[[], EvmChain] | None = None
    orphan_from: int | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    facts: list[dict[str, Any]] = field(default_factory=list)
    reserves: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    tvl: list[dict[str, Any]] = field(default_factory=list)
    batch: IngestBatch | None = None


def _word(data: bytes, index: int) -> int:
    return int.from_bytes(data[32 * index : 32 * index + 32], "big")


def _signed(value: int) -> int:
    return value - _TWO_256 if value >= _TWO_255 else value


def _address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def _common(log: Mapping[str, Any], kind: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "block": int(log["blockNumber"], 16),
        "block_hash": log["blockHash"],
        "tx_hash": log["transactionHash"],
        "tx_index": int(log["transactionIndex"], 16),
        "log_index": int(log["logIndex"], 16),
        "address": log["address"].lower(),
    }


def decode_log(
    log: Mapping[str, Any],
    pools: Mapping[str, PoolSpec],
    tokens: Mapping[str, TokenSpec],
) -> dict[str, Any] | None:
    """The fact a raw log states, or None when it is not one of ours (another contract,
    another event, a V2 event from a V3 pool)."""
    topics = log["topics"]
    if not topics:
        return None
    topic0 = topics[0]
    address = log["address"].lower()
    data = bytes.fromhex(log["data"][2:])
    pool = pools.get(address)
    if pool is not None:
        if pool.kind == "v2":
            if topic0 == V2_SYNC:
                fact = _common(log, "sync")
                fact.update(reserve0=str(_word(data, 0)), reserve1=str(_word(data, 1)))
                return fact
            if topic0 == V2_SWAP:
                fact = _swap(log, pool, _address(topics[1]), _address(topics[2]))
                fact.update(
                    amount0_in=str(_word(data, 0)),
                    amount1_in=str(_word(data, 1)),
                    amount0_out=str(_word(data, 2)),
                    amount1_out=str(_word(data, 3)),
                )
                return fact
            if topic0 in (V2_MINT, V2_BURN):
                fact = _common(log, "mint" if topic0 == V2_MINT else "burn")
                fact.update(
                    pool=address,
                    protocol=pool.protocol,
                    sender=_address(topics[1]),
                    amount0=str(_word(data, 0)),
                    amount1=str(_word(data, 1)),
                )
                if topic0 == V2_BURN:
                    fact["to"] = _address(topics[2])
                return fact
        elif topic0 == V3_SWAP:
            amount0, amount1 = _signed(_word(data, 0)), _signed(_word(data, 1))
            fact = _swap(log, pool, _address(topics[1]), _address(topics[2]))
            fact.update(
                amount0_in=str(max(amount0, 0)),
                amount1_in=str(max(amount1, 0)),
                amount0_out=str(max(-amount0, 0)),
                amount1_out=str(max(-amount1, 0)),
                sqrt_price_x96=str(_word(data, 2)),
                liquidity=str(_word(data, 3)),
                tick=_signed(_word(data, 4)),
            )
            return fact
    if topic0 == TRANSFER and address in tokens and len(topics) == 3:
        fact = _common(log, "transfer")
        fact.update(
            token=address,
            sender=_address(topics[1]),
            recipient=_address(topics[2]),
            amount=str(_word(data, 0)),
        )
        return fact
    return None


def _swap(log: Mapping[str, Any], pool: PoolSpec, sender: str, recipient: str) -> dict[str, Any]:
    fact = _common(log, "swap")
    fact.update(
        pool=pool.address,
        protocol=pool.protocol,
        version=pool.kind,
        sender=sender,
        recipient=recipient,
        token0=pool.token0,
        token1=pool.token1,
    )
    return fact


def pool_value(
    reserves: tuple[int, int], pool: PoolSpec, tokens: Mapping[str, TokenSpec]
) -> float | None:
    """The pool's TVL in USD: each reserve times its token's fixed price; a leg without
    a price is worth the priced leg (a constant-product pool holds equal value on both
    sides at its own price). None when neither leg is priced."""
    legs: list[float | None] = []
    for amount, address in zip(reserves, (pool.token0, pool.token1), strict=True):
        token = tokens.get(address)
        decimals = token.decimals if token is not None else 18
        usd = token.usd if token is not None else None
        legs.append(None if usd is None else float(amount) / 10**decimals * usd)
    priced: list[float] = [leg for leg in legs if leg is not None]
    if not priced:
        return None
    if len(priced) == 1:
        return 2 * priced[0]
    return sum(priced)


def apply_fact(
    reserves: dict[str, tuple[int, int]], fact: Mapping[str, Any], pools: Mapping[str, PoolSpec]
) -> str | None:
    """Update ``reserves`` (pool -> token amounts) with ``fact``; the pool it moved, if any.

    A V2 pool's reserves are its ``Sync``; a V3 pool's are its token balances, moved by the
    tokens' ``Transfer``s to and from it."""
    kind = fact["kind"]
    if kind == "sync":
        address = str(fact["address"])
        reserves[address] = (int(fact["reserve0"]), int(fact["reserve1"]))
        return address
    if kind != "transfer":
        return None
    moved = None
    for side, sign in (("recipient", 1), ("sender", -1)):
        pool = pools.get(str(fact[side]))
        if pool is None or pool.kind != "v3":
            continue
        held = list(reserves.get(pool.address, (0, 0)))
        leg = 0 if fact["token"] == pool.token0 else 1 if fact["token"] == pool.token1 else None
        if leg is None:
            continue
        held[leg] += sign * int(fact["amount"])
        reserves[pool.address] = (held[0], held[1])
        moved = pool.address
    return moved


def protocols_of(pools: Sequence[PoolSpec]) -> dict[str, list[PoolSpec]]:
    """The configured pools by protocol slug."""
    by_protocol: dict[str, list[PoolSpec]] = {}
    for pool in pools:
        by_protocol.setdefault(pool.protocol, []).append(pool)
    return by_protocol
