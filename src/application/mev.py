"""MEV detection over one block's swap facts: sandwiches and cyclic arbitrage.

Pure functions over the swap facts an EVM collector records (``application/evm_facts.py``);
no I/O, no state across blocks. See docs/adr/0050-mev-detection.md for the definitions and
the shapes that fool them.

* **Actor** = a swap's ``recipient``, the address the pool pays. A log does not carry the
  transaction's ``from``; the recipient is who ends up holding the output, and a searcher's
  bot is the recipient of both its legs whether it calls the pool directly or via a router.
* **Sandwich**: in one pool and block, a front-run swap (tx F) and a back-run swap (tx B,
  later) with the same actor, opposite directions, around at least one victim swap (a tx
  between them, another recipient, the front-run's direction), with profit > 0 in the token
  the front-run paid (the *quote* token). Profit is taken on the matched quantity of the
  other token (what the back-run sold, at most what the front-run bought), so an actor who
  closes half a position is not charged for the half it kept.
* **Cyclic arbitrage**: one transaction whose swaps chain (each leg pays in what the
  previous leg paid out) through at least two swaps and end in the token they started with,
  with more out than in.

Profit in USD: the quote token's fixed ``usd`` price; a quote token without one is valued
through the detection's own trade with a priced token (as ``pool_value`` values an unpriced
leg through its pool); None when neither is priced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from .evm_facts import TokenSpec

MevKind = Literal["sandwich", "arbitrage"]


@dataclass(frozen=True, slots=True)
class Trade:
    """One swap seen from its trader: ``amount_in`` of ``token_in`` paid, ``amount_out`` of
    ``token_out`` received by ``actor`` (raw token units)."""

    block: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    pool: str
    actor: str
    token_in: str
    token_out: str
    amount_in: int
    amount_out: int

    @property
    def order(self) -> tuple[int, int]:
        return self.tx_index, self.log_index


@dataclass(frozen=True, slots=True)
class MevFinding:
    """One detection: what ``MevDetected`` records. ``profit`` is in raw units of
    ``quote_token``; ``profit_usd`` None when no price reaches the quote token."""

    kind: MevKind
    block: int
    block_hash: str
    pool: str
    actor: str
    victim: str | None
    quote_token: str
    profit: int
    profit_quote: float
    profit_usd: float | None
    tx_hashes: tuple[str, ...]
    pools: tuple[str, ...]

    @property
    def key(self) -> str:
        """Identifies the detection across replays: kind, block hash and transactions."""
        return f"{self.kind}:{self.block_hash}:{','.join(self.tx_hashes)}"

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "block": self.block,
            "block_hash": self.block_hash,
            "pool": self.pool,
            "actor": self.actor,
            "victim": self.victim,
            "quote_token": self.quote_token,
            # uint256-sized: kept as a decimal string, as the swap facts keep amounts.
            "profit": str(self.profit),
            "profit_quote": self.profit_quote,
            "profit_usd": self.profit_usd,
            "tx_hashes": list(self.tx_hashes),
            "pools": list(self.pools),
        }


def trade_of(fact: Mapping[str, Any]) -> Trade | None:
    """The trade a swap fact states, or None when it is not one token in and one out (a
    flash swap paying back in both tokens, an empty swap)."""
    if fact.get("kind") != "swap":
        return None
    net0 = int(fact["amount0_in"]) - int(fact["amount0_out"])
    net1 = int(fact["amount1_in"]) - int(fact["amount1_out"])
    token0, token1 = str(fact["token0"]), str(fact["token1"])
    if net0 > 0 > net1:
        token_in, token_out, amount_in, amount_out = token0, token1, net0, -net1
    elif net1 > 0 > net0:
        token_in, token_out, amount_in, amount_out = token1, token0, net1, -net0
    else:
        return None
    return Trade(
        block=int(fact["block"]),
        block_hash=str(fact["block_hash"]),
        tx_hash=str(fact["tx_hash"]),
        tx_index=int(fact["tx_index"]),
        log_index=int(fact["log_index"]),
        pool=str(fact["pool"]),
        actor=str(fact["recipient"]),
        token_in=token_in,
        token_out=token_out,
        amount_in=amount_in,
        amount_out=amount_out,
    )


def _units(amount: int | Fraction, token: str, tokens: Mapping[str, TokenSpec]) -> float:
    spec = tokens.get(token)
    return float(Fraction(amount) / 10 ** (spec.decimals if spec is not None else 18))


def _usd(
    profit: Fraction,
    quote: str,
    via: Trade,
    tokens: Mapping[str, TokenSpec],
) -> float | None:
    """The profit in USD: the quote token's price, else through ``via`` (a trade between
    the quote token and another one) at that trade's own rate."""
    spec = tokens.get(quote)
    if spec is not None and spec.usd is not None:
        return _units(profit, quote, tokens) * spec.usd
    other = via.token_out if via.token_in == quote else via.token_in
    other_spec = tokens.get(other)
    if other_spec is None or other_spec.usd is None:
        return None
    quote_amount, other_amount = (
        (via.amount_in, via.amount_out)
        if via.token_in == quote
        else (via.amount_out, via.amount_in)
    )
    other_per_quote = Fraction(other_amount, quote_amount)
    return _units(profit * other_per_quote, other, tokens) * other_spec.usd


def sandwiches(trades: Sequence[Trade], tokens: Mapping[str, TokenSpec]) -> list[MevFinding]:
    """The sandwiches among one block's trades (any order; each trade is used at most once
    as a front- or back-run)."""
    by_pool: dict[str, list[Trade]] = {}
    for trade in trades:
        by_pool.setdefault(trade.pool, []).append(trade)
    found: list[MevFinding] = []
    for pool in sorted(by_pool):
        pool_trades = sorted(by_pool[pool], key=lambda t: t.order)
        used: set[int] = set()
        for b, back in enumerate(pool_trades):
            for f in range(b - 1, -1, -1):  # the nearest open front-run first
                front = pool_trades[f]
                if f in used or not _opposite(front, back) or front.tx_hash == back.tx_hash:
                    continue
                if front.actor != back.actor:
                    continue
                victims = [
                    t
                    for t in pool_trades[f + 1 : b]
                    if t.tx_hash not in (front.tx_hash, back.tx_hash)
                    and t.actor != front.actor
                    and t.token_in == front.token_in
                ]
                if not victims:
                    continue
                profit = _matched_profit(front, back)
                if profit < 1:  # less than one raw unit of the quote token is no profit
                    continue
                used.update((f, b))
                quote = front.token_in
                found.append(
                    MevFinding(
                        kind="sandwich",
                        block=back.block,
                        block_hash=back.block_hash,
                        pool=pool,
                        actor=front.actor,
                        victim=victims[0].actor,
                        quote_token=quote,
                        profit=int(profit),
                        profit_quote=_units(profit, quote, tokens),
                        profit_usd=_usd(profit, quote, back, tokens),
                        tx_hashes=(front.tx_hash, victims[0].tx_hash, back.tx_hash),
                        pools=(pool,),
                    )
                )
                break
    return found


def _opposite(front: Trade, back: Trade) -> bool:
    return front.token_in == back.token_out and front.token_out == back.token_in


def _matched_profit(front: Trade, back: Trade) -> Fraction:
    """The back-run's proceeds minus the front-run's cost, both on the quantity of the
    middle token that was bought and sold again (in the quote token's raw units)."""
    matched = min(front.amount_out, back.amount_in)
    sold_at = Fraction(back.amount_out, back.amount_in)  # quote per middle token, back-run
    bought_at = Fraction(front.amount_in, front.amount_out)  # quote per middle token, front
    return matched * (sold_at - bought_at)


def arbitrages(trades: Sequence[Trade], tokens: Mapping[str, TokenSpec]) -> list[MevFinding]:
    """The cyclic arbitrages among one block's trades: per transaction, swaps chained in
    log order that end in the token they started with, at a profit."""
    by_tx: dict[str, list[Trade]] = {}
    for trade in trades:
        by_tx.setdefault(trade.tx_hash, []).append(trade)
    found: list[MevFinding] = []
    for tx_hash, legs in by_tx.items():
        legs = sorted(legs, key=lambda t: t.log_index)
        start = 0
        while start < len(legs) - 1:
            end = _cycle_end(legs, start)
            if end is None:
                start += 1
                continue
            first, last = legs[start], legs[end]
            profit = Fraction(last.amount_out - first.amount_in)
            if profit > 0:
                quote = first.token_in
                found.append(
                    MevFinding(
                        kind="arbitrage",
                        block=first.block,
                        block_hash=first.block_hash,
                        pool=first.pool,
                        actor=last.actor,
                        victim=None,
                        quote_token=quote,
                        profit=int(profit),
                        profit_quote=_units(profit, quote, tokens),
                        profit_usd=_usd(profit, quote, first, tokens),
                        tx_hashes=(tx_hash,),
                        pools=tuple(leg.pool for leg in legs[start : end + 1]),
                    )
                )
            start = end + 1
    return found


def _cycle_end(legs: Sequence[Trade], start: int) -> int | None:
    """The index of the leg that closes a cycle begun at ``start`` (the chain of legs,
    each paying in what the previous paid out, back to the first leg's token)."""
    for i in range(start + 1, len(legs)):
        if legs[i].token_in != legs[i - 1].token_out:
            return None
        if legs[i].token_out == legs[start].token_in:
            return i
    return None


def detect_block(
    facts: Iterable[Mapping[str, Any]], tokens: Mapping[str, TokenSpec]
) -> list[MevFinding]:
    """Every sandwich and cyclic arbitrage in one block's facts (other kinds are ignored)."""
    trades = [t for t in (trade_of(f) for f in facts) if t is not None]
    return sandwiches(trades, tokens) + arbitrages(trades, tokens)


def detect(facts: Iterable[Mapping[str, Any]], tokens: Mapping[str, TokenSpec]) -> list[MevFinding]:
    """``detect_block`` for each block hash among ``facts`` (an ``evm_blocks_recorded``
    entry's facts may span blocks), in block order."""
    by_block: dict[str, list[Mapping[str, Any]]] = {}
    for fact in facts:
        if fact.get("kind") == "swap":
            by_block.setdefault(str(fact["block_hash"]), []).append(fact)
    found: list[MevFinding] = []
    for block_facts in sorted(by_block.values(), key=lambda fs: int(fs[0]["block"])):
        found.extend(detect_block(block_facts, tokens))
    return found
