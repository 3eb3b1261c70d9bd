"""Smart money: how the default ranking and a trained model separate generated wallets
whose label is known, and how fast features are computed.

    python bench/bench_smart_money.py [--wallets 600] [--epochs 60] [--seed 16] [--noise 0.2]
                                      [--skill 0.65] [--repeat 3]

Two constant-product pools (USDC/WETH from the start; USDC/NEW listed a third of the way
in, 0.3 % fee) trade through ``--epochs`` epochs of 20 blocks (12 s apart). Each epoch has a
hidden direction: "market" flow (many small traders, never labelled) pushes WETH up or
down over the epoch; NEW is pushed up from its listing on, with one crash. Wallets, in
equal thirds, each trading in about half the epochs:

  informed (label 1)  guess each epoch's direction, right with probability ``--skill``
                      (0.65); when they expect a rise, buy WETH in its first blocks and
                      sell near its end; among NEW's first buyers, sell half after it rose
  noise    (label 0)  buy or sell at random blocks, random sizes
  chasers  (label 0)  buy after a rise (in the middle of a rising epoch), sell in the
                      middle of the next epoch; buy NEW late

Every swap moves the pools' real reserves; features come from ``moves_of`` and
``wallet_features`` over the swap facts, as the history read model computes them.

Reported: the default score's ROC AUC and its precision = recall at k (k = labelled
positives: the top k wallets); the model's precision, recall and ROC AUC on a stratified
held-out quarter, trained (1) on the true labels, (2) on labels with ``--noise`` of them
flipped (scored against the true ones); and features/s over all moves (median of 3).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from _common import machine
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from defi_realtime.application.evm_facts import TokenSpec
from defi_realtime.application.smart_money import (
    WalletFeatures,
    default_score,
    moves_of,
    wallet_features,
)
from defi_realtime.application.smart_money_model import train

USDC, WETH, NEW = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "44" * 20
POOL_WETH, POOL_NEW = "0x" + "aa" * 20, "0x" + "bb" * 20
TOKENS = {
    USDC: TokenSpec(USDC, "USDC", 6, usd=1.0),
    WETH: TokenSpec(WETH, "WETH", 18),
    NEW: TokenSpec(NEW, "NEW", 18),
}
DECIMALS = {USDC: 6, WETH: 18, NEW: 18}
BLOCKS_PER_EPOCH = 20
BLOCK_SECONDS = 12


@dataclass
class Pool:
    address: str
    token0: str  # USDC
    token1: str
    reserve0: float
    reserve1: float

    def price(self) -> float:
        return self.reserve0 / self.reserve1

    def trade(self, pay: str, amount: float) -> float:
        """Pay ``amount`` (token units) of ``pay``: what comes out, the reserves moved."""
        if pay == self.token0:
            out = amount * 0.997 * self.reserve1 / (self.reserve0 + amount * 0.997)
            self.reserve0 += amount
            self.reserve1 -= out
        else:
            out = amount * 0.997 * self.reserve0 / (self.reserve1 + amount * 0.997)
            self.reserve1 += amount
            self.reserve0 -= out
        return out


@dataclass
class Market:
    rng: random.Random
    pools: dict[str, Pool]
    facts: list[dict[str, Any]] = field(default_factory=list)
    blocks: list[dict[str, Any]] = field(default_factory=list)
    log: int = 0
    holdings: dict[tuple[str, str], float] = field(default_factory=dict)

    def swap(self, block: int, wallet: str, pool_address: str, pay: str, amount: float) -> None:
        pool = self.pools[pool_address]
        get = pool.token1 if pay == pool.token0 else pool.token0
        if pay != USDC:
            amount = min(amount, self.holdings.get((wallet, pay), 0.0))
            if amount <= 0:
                return
        out = pool.trade(pay, amount)
        self.holdings[(wallet, pay)] = self.holdings.get((wallet, pay), 0.0) - amount
        self.holdings[(wallet, get)] = self.holdings.get((wallet, get), 0.0) + out
        raw_in, raw_out = int(amount * 10 ** DECIMALS[pay]), int(out * 10 ** DECIMALS[get])
        amounts = {"amount0_in": 0, "amount1_in": 0, "amount0_out": 0, "amount1_out": 0}
        amounts["amount0_in" if pay == pool.token0 else "amount1_in"] = raw_in
        amounts["amount0_out" if get == pool.token0 else "amount1_out"] = raw_out
        self.log += 1
        self.facts.append(
            {
                "kind": "swap",
                "block": block,
                "block_hash": f"0xb{block}",
                "tx_hash": f"0xt{self.log}",
                "tx_index": self.log,
                "log_index": self.log,
                "pool": pool.address,
                "recipient": wallet,
                "token0": pool.token0,
                "token1": pool.token1,
                **{k: str(v) for k, v in amounts.items()},
            }
        )


def wallet(kind: str, index: int) -> str:
    prefix = {"informed": "1", "noise": "2", "chaser": "3", "market": "9"}[kind]
    return "0x" + prefix + f"{index:039x}"


def generate(wallets: int, epochs: int, seed: int, skill: float) -> tuple[Market, dict[str, int]]:
    rng = random.Random(seed)
    market = Market(
        rng,
        {
            POOL_WETH: Pool(POOL_WETH, USDC, WETH, 20_000_000.0, 10_000.0),
            POOL_NEW: Pool(POOL_NEW, USDC, NEW, 200_000.0, 2_000_000.0),
        },
    )
    third = wallets // 3
    informed = [wallet("informed", i) for i in range(third)]
    noise = [wallet("noise", i) for i in range(third)]
    chasers = [wallet("chaser", i) for i in range(wallets - 2 * third)]
    labels = dict.fromkeys(informed, 1) | dict.fromkeys(noise + chasers, 0)
    listing = epochs // 3
    crash = 2 * epochs // 3
    directions = [rng.choice((1, -1)) for _ in range(epochs)]
    new_buyers = informed[:]
    rng.shuffle(new_buyers)
    for epoch in range(epochs):
        first = epoch * BLOCKS_PER_EPOCH
        middle, last = first + BLOCKS_PER_EPOCH // 2, first + BLOCKS_PER_EPOCH - 1
        plan: dict[int, list[tuple[str, str, str, float]]] = {}

        def at(block: int, *trade: Any, plan: dict[int, list[Any]] = plan) -> None:
            plan.setdefault(block, []).append(trade)

        up = directions[epoch] > 0
        for w in informed:
            # Right about the epoch with probability ``skill``; trades when it expects a rise.
            expects_up = up if rng.random() < skill else not up
            if rng.random() < 0.5 and expects_up:
                at(first + rng.randrange(3), w, POOL_WETH, USDC, rng.uniform(5_000, 50_000))
                at(last - rng.randrange(5), w, POOL_WETH, WETH, 1e12)  # all it holds
        for w in chasers:
            if rng.random() < 0.5 and epoch > 0 and directions[epoch - 1] > 0:
                at(
                    first + rng.randrange(BLOCKS_PER_EPOCH),
                    w,
                    POOL_WETH,
                    USDC,
                    rng.uniform(5e3, 5e4),
                )
            if rng.random() < 0.5:
                at(middle, w, POOL_WETH, WETH, 1e12)
        for w in noise:
            if rng.random() < 0.5:
                block = first + rng.randrange(BLOCKS_PER_EPOCH)
                if rng.random() < 0.5:
                    at(block, w, POOL_WETH, USDC, rng.uniform(5e3, 5e4))
                else:
                    at(block, w, POOL_WETH, WETH, rng.uniform(1, 20))
        # The market's flow makes the epoch's direction: many small trades throughout.
        for block in range(first, last + 1):
            for n in range(6):
                m = wallet("market", epoch * 1_000 + block % 20 * 10 + n)
                market.holdings[(m, WETH)] = 1e9
                if up:
                    at(block, m, POOL_WETH, USDC, rng.uniform(20_000, 60_000))
                else:
                    at(block, m, POOL_WETH, WETH, rng.uniform(10, 30))
        # NEW: listed at ``listing``; informed wallets among its first buyers, chasers late;
        # demand lifts it until ``crash``.
        if epoch == listing:
            for index, w in enumerate(new_buyers):
                at(first + index % BLOCKS_PER_EPOCH, w, POOL_NEW, USDC, rng.uniform(1e3, 5e3))
        if listing < epoch < crash:
            for block in range(first, last + 1, 2):
                m = wallet("market", 900_000 + block)
                at(block, m, POOL_NEW, USDC, rng.uniform(2_000, 8_000))
            if epoch == crash - 2:
                for w in chasers:
                    if rng.random() < 0.5:
                        at(middle, w, POOL_NEW, USDC, rng.uniform(1e3, 5e3))
            if epoch == crash - 4:
                for w in informed:
                    at(middle, w, POOL_NEW, NEW, market.holdings.get((w, NEW), 0.0) / 2)
        if epoch == crash:
            m = wallet("market", 999_999)
            market.holdings[(m, NEW)] = 1e12
            at(first, m, POOL_NEW, NEW, market.pools[POOL_NEW].reserve1 * 0.8)
        for block in range(first, last + 1):
            trades = plan.get(block, [])
            rng.shuffle(trades)
            for w, pool, pay, amount in trades:
                market.swap(block, w, pool, pay, amount)
            market.blocks.append(
                {"number": block, "hash": f"0xb{block}", "timestamp": block * BLOCK_SECONDS}
            )
    return market, labels


def evaluate(
    features: dict[str, WalletFeatures],
    labels: dict[str, int],
    noise: float,
    seed: int,
) -> list[str]:
    """Hold out a stratified quarter of the wallets (true labels) before anything trains;
    the model learns from the rest (its labels true, or ``noise`` of them flipped)."""
    rng = random.Random(seed)
    wallets = sorted(w for w in labels if w in features)
    held: list[str] = []
    for label in (0, 1):
        group = [w for w in wallets if labels[w] == label]
        rng.shuffle(group)
        held += group[: len(group) // 4]
    held_set = set(held)
    learn = [w for w in wallets if w not in held_set]
    truth = [labels[w] for w in held]
    positives = sum(truth)
    lines = [
        f"wallets with trades: {len(wallets)} ({sum(labels[w] for w in wallets)} labelled "
        f"smart); held out: {len(held)} ({positives} smart)"
    ]
    scores = [default_score(features[w]).score for w in held]
    top = sorted(range(len(held)), key=lambda i: -scores[i])[:positives]
    at_k = sum(truth[i] for i in top) / positives
    lines.append(
        f"default ranking (held-out wallets): ROC AUC {roc_auc_score(truth, scores):.3f}, "
        f"precision = recall at k={positives}: {at_k:.3f}"
    )
    for name, given in (
        ("true labels", {w: labels[w] for w in learn}),
        (
            f"{noise:.0%} of labels flipped",
            {w: (1 - labels[w] if rng.random() < noise else labels[w]) for w in learn},
        ),
    ):
        model = train(features, given, version=1, trained_at=0.0, seed=seed)
        probabilities = [model.probability(features[w]) for w in held]
        predicted = [int(p >= 0.5) for p in probabilities]
        lines.append(
            f"model trained on {len(learn)} wallets, {name}; on the held-out wallets' true "
            f"labels: precision {precision_score(truth, predicted, zero_division=0):.3f}, "
            f"recall {recall_score(truth, predicted, zero_division=0):.3f}, "
            f"ROC AUC {roc_auc_score(truth, probabilities):.3f} (its own held-out metrics, "
            f"on the labels it was given: AUC {model.metrics['roc_auc']:.3f})"
        )
        weights = sorted(
            zip(model.feature_names, model.coefficients, strict=True), key=lambda p: -abs(p[1])
        )
        lines.append(
            "  largest coefficients: " + ", ".join(f"{n} {c:+.2f}" for n, c in weights[:4])
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wallets", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--skill", type=float, default=0.65)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    market, labels = generate(args.wallets, args.epochs, args.seed, args.skill)
    moves = moves_of(1, market.blocks, market.facts)
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        features = wallet_features(moves, TOKENS)
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    print(
        f"{len(market.blocks):,} blocks, {len(moves):,} moves, {len(features):,} wallets; "
        f"features in {seconds * 1000:.0f} ms ({len(moves) / seconds:,.0f} moves/s, median "
        f"of {args.repeat})"
    )
    weth, new = market.pools[POOL_WETH].price(), market.pools[POOL_NEW].price()
    print(f"final prices: WETH {weth:,.0f} USDC, NEW {new:.4f} USDC")
    for line in evaluate(features, labels, args.noise, args.seed):
        print(line)


if __name__ == "__main__":
    main()
