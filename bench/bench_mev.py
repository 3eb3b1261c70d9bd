"""MEV detection: precision and recall on generated, labelled blocks, and detector speed.

    python bench/bench_mev.py [--blocks 2000] [--background 6] [--seed 16] [--repeat 3]

Three constant-product pools (USDC/WETH, WETH/DAI, DAI/USDC, 0.3 % fee) trade block after
block. Each block holds ``--background`` small trades by distinct traders (random pool and
direction, random positions in the block) and one scenario, drawn uniformly from:

  MEV (label positive)
    sandwich          a bot buys, a victim buys the same way, the bot sells what it bought;
                      kept only if the bot's round trip gains (else it is ``sandwich_loss``)
    sandwich_weth     the same, quoted in WETH (the bot sells WETH first)
    arbitrage         a large trade skews one pool, then one tx cycles USDC->WETH->DAI->USDC
                      at a gain (else ``cycle_loss``)
    sandwich_2addr    a sandwich whose bot receives the front- and back-run at two
                      addresses, at a gain: a known miss (the actor is the swap recipient)
  look-alikes (label negative)
    sandwich_loss     same actor both sides around a victim, at a loss (small victim)
    unrelated         three different traders in sandwich order
    next_block        the back-run lands in the next block
    route             one tx routes USDC->WETH->DAI (several pools, no cycle)
    cycle_loss        a cycle that ends with less than it started
    shared_recipient  two users trade through one settlement contract (the recipient of
                      both) around a third user's trade: a known false positive

Every swap goes through the pool's real reserves, so profits and losses come from the
price impact, not from chosen numbers. The detector (``application/mev.detect``) sees only
the swap facts, as an ``evm_blocks_recorded`` entry carries them. A detection is a true
positive when it names a labelled scenario's transactions (front- and back-run for a
sandwich, the tx for an arbitrage). Precision = TP / detections, recall = TP / labelled.
Then per shape: instances and how many were flagged. Speed: ``detect`` over all blocks,
blocks/s and swaps/s, median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from _common import machine

from defi_realtime.application.evm_facts import TokenSpec
from defi_realtime.application.mev import detect

USDC, WETH, DAI = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
TOKENS = {
    USDC: TokenSpec(USDC, "USDC", 6, usd=1.0),
    WETH: TokenSpec(WETH, "WETH", 18),
    DAI: TokenSpec(DAI, "DAI", 18, usd=1.0),
}
E6, E18 = 10**6, 10**18
POSITIVE = {"sandwich", "sandwich_weth", "arbitrage", "sandwich_2addr"}
SHAPES = (
    "sandwich",
    "sandwich_weth",
    "arbitrage",
    "sandwich_2addr",
    "sandwich_loss",
    "unrelated",
    "next_block",
    "route",
    "cycle_loss",
    "shared_recipient",
)


@dataclass
class Pool:
    address: str
    token0: str
    token1: str
    reserve0: int
    reserve1: int

    def quote(self, token_in: str, amount_in: int) -> int:
        """The constant-product output with a 0.3 % fee (Uniswap V2's getAmountOut)."""
        r_in, r_out = (
            (self.reserve0, self.reserve1)
            if token_in == self.token0
            else (self.reserve1, self.reserve0)
        )
        with_fee = amount_in * 997
        return with_fee * r_out // (r_in * 1000 + with_fee)

    def other(self, token: str) -> str:
        return self.token1 if token == self.token0 else self.token0


@dataclass
class Chain:
    """Generates blocks of swap facts against the pools, with the scenario labels."""

    rng: random.Random
    pools: dict[str, Pool]
    number: int = 1
    facts: list[dict[str, Any]] = field(default_factory=list)
    tx_index: int = 0
    addresses: int = 0
    carry: list[tuple[str, str, str, int, str | None]] = field(default_factory=list)

    def address(self) -> str:
        self.addresses += 1
        return f"0x{self.addresses:040x}"

    def tx(self) -> str:
        self.tx_index += 1
        return f"0x{self.number:08x}{self.tx_index:056x}"

    def swap(
        self, pool_name: str, actor: str, token_in: str, amount_in: int, tx: str, log: int = 0
    ) -> int:
        pool = self.pools[pool_name]
        out = pool.quote(token_in, amount_in)
        in0 = amount_in if token_in == pool.token0 else 0
        in1 = amount_in - in0
        out0 = out if token_in == pool.token1 else 0
        out1 = out - out0
        pool.reserve0 += in0 - out0
        pool.reserve1 += in1 - out1
        self.facts.append(
            {
                "kind": "swap",
                "block": self.number,
                "block_hash": f"0xb{self.number:063x}",
                "tx_hash": tx,
                "tx_index": int(tx[10:], 16),
                "log_index": log,
                "address": pool.address,
                "pool": pool.address,
                "protocol": "dex",
                "version": "v2",
                "sender": actor,
                "recipient": actor,
                "token0": pool.token0,
                "token1": pool.token1,
                "amount0_in": str(in0),
                "amount1_in": str(in1),
                "amount0_out": str(out0),
                "amount1_out": str(out1),
            }
        )
        return out

    def background(self) -> None:
        name = self.rng.choice(list(self.pools))
        pool = self.pools[name]
        token = self.rng.choice((pool.token0, pool.token1))
        reserve = pool.reserve0 if token == pool.token0 else pool.reserve1
        self.swap(
            name, self.address(), token, int(reserve * self.rng.uniform(1e-5, 2e-3)), self.tx()
        )

    def end_block(self) -> list[dict[str, Any]]:
        facts, self.facts = self.facts, []
        self.number += 1
        self.tx_index = 0
        return facts


def sandwich(chain: Chain, rng: random.Random, shape: str) -> tuple[str, tuple[str, ...], bool]:
    """Front-run, victim, back-run in USDC/WETH; the label's shape, its txs and whether
    the round trip gained."""
    quote = WETH if shape == "sandwich_weth" else USDC
    pool = chain.pools["usdc-weth"]
    reserve = pool.reserve0 if quote == pool.token0 else pool.reserve1
    bot = chain.address()
    back_actor = {"unrelated": chain.address(), "sandwich_2addr": chain.address()}.get(shape, bot)
    front_actor = chain.address() if shape == "unrelated" else bot
    victim = chain.address()
    if shape == "shared_recipient":
        front_actor = back_actor = "0x" + "5e" * 20  # a settlement contract both users use
    small_victim = shape == "sandwich_loss"
    front_in = int(reserve * rng.uniform(0.002, 0.01))
    victim_in = int(
        reserve * (rng.uniform(1e-5, 1e-4) if small_victim else rng.uniform(0.01, 0.05))
    )
    front_tx = chain.tx()
    bought = chain.swap("usdc-weth", front_actor, quote, front_in, front_tx)
    for _ in range(rng.randint(0, 2)):
        chain.background()
    chain.swap("usdc-weth", victim, quote, victim_in, chain.tx())
    middle = pool.other(quote)
    if shape == "next_block":
        chain.carry.append(("usdc-weth", bot, middle, bought, None))
        return shape, (front_tx,), False
    back_tx = chain.tx()
    proceeds = chain.swap("usdc-weth", back_actor, middle, bought, back_tx)
    gained = proceeds > front_in
    # The label is what happened: background trades between the legs can turn a planned
    # loss into a gain, and a planned sandwich into a loss.
    if shape in ("sandwich", "sandwich_weth") and not gained:
        shape = "sandwich_loss"
    elif shape == "sandwich_loss" and gained:
        shape = "sandwich"
    elif shape == "sandwich_2addr" and not gained:
        shape = "unrelated"  # two addresses at a loss: no MEV by any reading
    return shape, (front_tx, back_tx), gained


def cycle(chain: Chain, rng: random.Random, shape: str) -> tuple[str, tuple[str, ...], bool]:
    """A skewing trade, then one tx through two or three pools."""
    skew = chain.pools["weth-dai"]
    chain.swap(
        "weth-dai", chain.address(), DAI, int(skew.reserve1 * rng.uniform(0.005, 0.03)), chain.tx()
    )
    bot, tx = chain.address(), chain.tx()
    amount = int(chain.pools["usdc-weth"].reserve0 * rng.uniform(0.0005, 0.002))
    weth = chain.swap("usdc-weth", bot, USDC, amount, tx, 0)
    dai = chain.swap("weth-dai", bot, WETH, weth, tx, 1)
    if shape == "route":
        return shape, (tx,), False
    usdc = chain.swap("dai-usdc", bot, DAI, dai, tx, 2)
    gained = usdc > amount
    return ("arbitrage" if gained else "cycle_loss"), (tx,), gained


def generate(
    blocks: int, background: int, seed: int
) -> tuple[list[list[dict[str, Any]]], list[tuple[str, tuple[str, ...]]]]:
    rng = random.Random(seed)
    chain = Chain(
        rng,
        {
            "usdc-weth": Pool("0x" + "aa" * 20, USDC, WETH, 10_000_000 * E6, 5_000 * E18),
            "weth-dai": Pool("0x" + "bb" * 20, WETH, DAI, 5_000 * E18, 10_000_000 * E18),
            "dai-usdc": Pool("0x" + "cc" * 20, DAI, USDC, 10_000_000 * E18, 10_000_000 * E6),
        },
    )
    out: list[list[dict[str, Any]]] = []
    labels: list[tuple[str, tuple[str, ...]]] = []
    for _ in range(blocks):
        for pool_name, actor, token, amount, _tx in chain.carry:
            chain.swap(pool_name, actor, token, amount, chain.tx())
        chain.carry.clear()
        for _ in range(rng.randint(0, background)):
            chain.background()
        shape = rng.choice(SHAPES)
        if shape in ("arbitrage", "route", "cycle_loss"):
            found_shape, txs, _ = cycle(chain, rng, shape)
        else:
            found_shape, txs, _ = sandwich(chain, rng, shape)
        labels.append((found_shape, txs))
        for _ in range(rng.randint(0, background)):
            chain.background()
        out.append(chain.end_block())
        # Arbitrage back to the pools' balance every so often, so prices stay sane.
        for pool in chain.pools.values():
            pool.reserve0, pool.reserve1 = _rebalanced(pool)
    return out, labels


def _rebalanced(pool: Pool) -> tuple[int, int]:
    """Pull the pool halfway back to its starting price (an outside arbitrageur)."""
    usd0 = 1.0 if pool.token0 in (USDC, DAI) else 2_000.0
    usd1 = 1.0 if pool.token1 in (USDC, DAI) else 2_000.0
    dec0, dec1 = TOKENS[pool.token0].decimals, TOKENS[pool.token1].decimals
    value0, value1 = pool.reserve0 / 10**dec0 * usd0, pool.reserve1 / 10**dec1 * usd1
    k = pool.reserve0 * pool.reserve1
    target0 = (value0 + value1) / 2 / usd0 * 10**dec0
    reserve0 = int((pool.reserve0 + target0) / 2)
    return reserve0, k // reserve0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=2_000)
    parser.add_argument("--background", type=int, default=6)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    blocks, labels = generate(args.blocks, args.background, args.seed)
    by_txs: dict[tuple[str, ...], str] = {}
    for shape, txs in labels:
        by_txs[txs] = shape
    shapes = Counter(shape for shape, _ in labels)
    flagged: Counter[str] = Counter()
    tp = fp = 0
    for block in blocks:
        for found in detect(block, TOKENS):
            txs = (
                found.tx_hashes
                if found.kind == "arbitrage"
                else (found.tx_hashes[0], found.tx_hashes[2])
            )
            shape = by_txs.get(txs, "background")
            flagged[shape] += 1
            if shape in POSITIVE:
                tp += 1
            else:
                fp += 1
    positives = sum(n for shape, n in shapes.items() if shape in POSITIVE)
    swaps = sum(len(b) for b in blocks)
    print(machine())
    print(f"{len(blocks)} blocks, {swaps} swaps, seed {args.seed}")
    print(
        f"precision {tp / max(tp + fp, 1):.3f}  recall {tp / max(positives, 1):.3f}  "
        f"(TP {tp}, FP {fp}, labelled MEV {positives})"
    )
    known = {"sandwich_2addr", "shared_recipient"}
    core = sum(n for s, n in shapes.items() if s in POSITIVE - known)
    core_tp = sum(flagged[s] for s in POSITIVE - known)
    core_fp = sum(n for s, n in flagged.items() if s not in POSITIVE and s not in known)
    print(
        f"without the two known-limit shapes: precision {core_tp / max(core_tp + core_fp, 1):.3f}"
        f"  recall {core_tp / max(core, 1):.3f}"
    )
    print(f"{'shape':<18}{'label':<8}{'instances':>10}{'flagged':>9}")
    for shape in sorted(shapes, key=lambda s: (s not in POSITIVE, s)):
        label = "MEV" if shape in POSITIVE else "not"
        print(f"{shape:<18}{label:<8}{shapes[shape]:>10}{flagged[shape]:>9}")
    if flagged["background"]:
        print(f"{'background':<18}{'not':<8}{'':>10}{flagged['background']:>9}")
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        for block in blocks:
            detect(block, TOKENS)
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    print(
        f"detect: {len(blocks) / seconds:,.0f} blocks/s, {swaps / seconds:,.0f} swaps/s "
        f"(median of {args.repeat})"
    )


if __name__ == "__main__":
    main()
