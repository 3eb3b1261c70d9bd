"""Smart money: wallet features from what EVM collectors record, and a transparent ranking.

Pure functions, no I/O (docs/adr/0051-smart-money.md):

* ``moves_of`` turns an ``evm_blocks_recorded`` entry into **wallet moves**: each swap a
  trade of its ``recipient`` (the address the pool pays, as the MEV detector's actor), each
  ERC-20 transfer a move out of its sender and into its recipient, except transfers in a
  transaction with a swap, a mint or a burn (those are the swap's or the liquidity's own
  legs, counted once through the swap or not at all); ``wallet_features`` also leaves out
  transfers to or from a pool (a trader paying a pair in a transaction of its own).
* ``PriceBook`` is the price history those trades imply: a token with a fixed ``usd`` price
  (``EVM_CHAINS``) values the other side of every trade against it, and a token priced that
  way values the tokens traded against it next (as ``pool_value`` values a pool).
* ``wallet_features`` replays a chain's moves in block order through FIFO lots per wallet
  and token, valued in USD at each move's price: realised PnL (disposals by swap), the
  unrealised PnL of what is still held (latest prices), win rate of closing trades,
  holding time, and **early entries**: tokens the wallet bought among the first quarter of
  the token's buyers, whose price then rose by at least ``GREW`` (20 %).
* ``default_score`` is the documented ranking formula (``SCORE_FORMULA``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .evm_facts import TokenSpec
from .mev import trade_of

MoveKind = Literal["swap", "transfer"]

ZERO_ADDRESS: Final = "0x" + "0" * 40
# An early entry: among the first EARLY_SHARE of a token's buyers, and its price grew by at
# least GREW after the wallet's first buy.
EARLY_SHARE: Final = 0.25
GREW: Final = 0.20
# Closed trades at which a wallet's score reaches half its weight (``confidence``).
CONFIDENCE_TRADES: Final = 3.0
FEATURE_NAMES: Final[tuple[str, ...]] = (
    "realised_pnl_usd",
    "unrealised_pnl_usd",
    "roi",
    "win_rate",
    "closed_trades",
    "trades",
    "avg_holding_hours",
    "early_entry_share",
    "volume_usd",
)
SCORE_FORMULA: Final = (
    "score = 100 * confidence * (0.4 * win_rate + 0.3 * early_entry_share"
    " + 0.3 * (tanh(roi) + 1) / 2), confidence = closed_trades / (closed_trades + 3),"
    " roi = (realised_pnl_usd + unrealised_pnl_usd) / max(bought_usd, 1)"
)


@dataclass(frozen=True, slots=True)
class WalletMove:
    """One wallet's side of a swap or a transfer: it paid ``amount_paid`` of
    ``token_paid`` and/or got ``amount_got`` of ``token_got`` (raw units; a transfer has one
    side). ``order`` sorts moves as the chain executed them."""

    chain_id: int
    block: int
    block_hash: str
    timestamp: float
    tx_hash: str
    tx_index: int
    log_index: int
    wallet: str
    kind: MoveKind
    pool: str | None
    counterparty: str | None  # a transfer's other side; a swap's pool
    token_paid: str | None
    amount_paid: int
    token_got: str | None
    amount_got: int

    @property
    def order(self) -> tuple[int, int, int]:
        return self.block, self.tx_index, self.log_index

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "block": self.block,
            "block_hash": self.block_hash,
            "timestamp": self.timestamp,
            "tx_hash": self.tx_hash,
            "tx_index": self.tx_index,
            "log_index": self.log_index,
            "wallet": self.wallet,
            "kind": self.kind,
            "pool": self.pool,
            "counterparty": self.counterparty,
            "token_paid": self.token_paid,
            "amount_paid": str(self.amount_paid),
            "token_got": self.token_got,
            "amount_got": str(self.amount_got),
        }


def moves_of(
    chain_id: int, blocks: Sequence[Mapping[str, Any]], facts: Iterable[Mapping[str, Any]]
) -> list[WalletMove]:
    """The wallet moves an ``evm_blocks_recorded`` entry (its ``blocks`` and ``facts``)
    holds, in chain order."""
    times = {str(block["hash"]): float(block.get("timestamp") or 0) for block in blocks}
    facts = list(facts)
    busy = {str(f["tx_hash"]) for f in facts if f.get("kind") in ("swap", "mint", "burn")}
    moves: list[WalletMove] = []
    for fact in facts:
        kind = fact.get("kind")
        block_hash = str(fact["block_hash"])
        common: dict[str, Any] = {
            "chain_id": chain_id,
            "block": int(fact["block"]),
            "block_hash": block_hash,
            "timestamp": times.get(block_hash, 0.0),
            "tx_hash": str(fact["tx_hash"]),
            "tx_index": int(fact["tx_index"]),
            "log_index": int(fact["log_index"]),
        }
        if kind == "swap":
            trade = trade_of(fact)
            if trade is None:
                continue
            moves.append(
                WalletMove(
                    **common,
                    wallet=trade.actor,
                    kind="swap",
                    pool=trade.pool,
                    counterparty=trade.pool,
                    token_paid=trade.token_in,
                    amount_paid=trade.amount_in,
                    token_got=trade.token_out,
                    amount_got=trade.amount_out,
                )
            )
        elif kind == "transfer" and str(fact["tx_hash"]) not in busy:
            token, amount = str(fact["token"]), int(fact["amount"])
            if amount <= 0:
                continue
            sender, recipient = str(fact["sender"]), str(fact["recipient"])
            if sender == recipient:
                continue  # to itself: nothing moves
            if sender != ZERO_ADDRESS:
                moves.append(_transfer_move(common, sender, recipient, paid=(token, amount)))
            if recipient != ZERO_ADDRESS:
                moves.append(_transfer_move(common, recipient, sender, got=(token, amount)))
    moves.sort(key=lambda move: move.order)
    return moves


def _transfer_move(
    common: Mapping[str, Any],
    wallet: str,
    counterparty: str,
    *,
    paid: tuple[str, int] | None = None,
    got: tuple[str, int] | None = None,
) -> WalletMove:
    return WalletMove(
        **common,
        wallet=wallet,
        kind="transfer",
        pool=None,
        counterparty=counterparty,
        token_paid=None if paid is None else paid[0],
        amount_paid=0 if paid is None else paid[1],
        token_got=None if got is None else got[0],
        amount_got=0 if got is None else got[1],
    )


def _units(amount: int, token: str, tokens: Mapping[str, TokenSpec]) -> float:
    spec = tokens.get(token)
    return amount / 10.0 ** (spec.decimals if spec is not None else 18)


class PriceBook:
    """USD prices of tokens as the trades imply them, move by move (``observe``), from the
    fixed ``usd`` prices of the configured tokens."""

    def __init__(self, tokens: Mapping[str, TokenSpec]) -> None:
        self.tokens = tokens
        self.latest: dict[str, float] = {
            address: spec.usd for address, spec in tokens.items() if spec.usd is not None
        }

    def fixed(self, token: str) -> bool:
        spec = self.tokens.get(token)
        return spec is not None and spec.usd is not None

    def observe(self, move: WalletMove) -> float | None:
        """Take a swap's implied price (of the side without a fixed price, through the side
        with a known price); the USD value of the trade, or None when neither side has a
        price yet."""
        if move.kind != "swap" or move.token_paid is None or move.token_got is None:
            return None
        paid = _units(move.amount_paid, move.token_paid, self.tokens)
        got = _units(move.amount_got, move.token_got, self.tokens)
        if paid <= 0 or got <= 0:
            return None
        # Value through the side whose price is fixed first, else the one known.
        for known, other, known_units, other_units in (
            (move.token_paid, move.token_got, paid, got),
            (move.token_got, move.token_paid, got, paid),
        ):
            if self.fixed(known):
                value = known_units * self.latest[known]
                if not self.fixed(other):
                    self.latest[other] = value / other_units
                return value
        for known, other, known_units, other_units in (
            (move.token_paid, move.token_got, paid, got),
            (move.token_got, move.token_paid, got, paid),
        ):
            price = self.latest.get(known)
            if price is not None:
                value = known_units * price
                self.latest[other] = value / other_units
                return value
        return None

    def price(self, token: str) -> float | None:
        return self.latest.get(token)


@dataclass(slots=True)
class _Lot:
    units: float
    cost_per_unit: float
    acquired_at: float


@dataclass(slots=True)
class _Book:
    """One wallet's running account while its moves replay."""

    lots: dict[str, deque[_Lot]] = field(default_factory=dict)
    realised: float = 0.0
    bought_usd: float = 0.0
    volume: float = 0.0
    trades: int = 0
    closed: int = 0
    wins: int = 0
    held_seconds: float = 0.0  # sum of units x seconds held, over closed units (USD-weighted)
    held_weight: float = 0.0
    first_buys: dict[str, float] = field(default_factory=dict)  # token -> price at first buy
    pools: set[str] = field(default_factory=set)

    def take(self, token: str, units: float) -> tuple[float, float, float]:
        """Remove ``units`` FIFO: (cost of what was taken, units x seconds since bought
        summed as USD cost x seconds, units found). Units beyond the lots held (bought
        before the chain's start block) have no known cost."""
        lots = self.lots.get(token)
        cost = found = 0.0
        weighted_since = 0.0
        while lots and units > 1e-18:
            lot = lots[0]
            used = min(lot.units, units)
            cost += used * lot.cost_per_unit
            weighted_since += used * lot.cost_per_unit * lot.acquired_at
            found += used
            units -= used
            lot.units -= used
            if lot.units <= 1e-18:
                lots.popleft()
        return cost, weighted_since, found


@dataclass(frozen=True, slots=True)
class WalletFeatures:
    """What a wallet's trades show (``FEATURE_NAMES``), with the counts behind them."""

    wallet: str
    realised_pnl_usd: float
    unrealised_pnl_usd: float
    roi: float
    win_rate: float
    closed_trades: int
    trades: int
    avg_holding_hours: float
    early_entry_share: float
    volume_usd: float
    bought_usd: float
    early_entries: int
    tokens_bought: int
    pools: tuple[str, ...]
    first_block: int
    last_block: int

    def vector(self) -> list[float]:
        """The features in ``FEATURE_NAMES`` order (a model's input)."""
        return [float(getattr(self, name)) for name in FEATURE_NAMES]

    def to_json(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in FEATURE_NAMES},
            "bought_usd": self.bought_usd,
            "early_entries": self.early_entries,
            "tokens_bought": self.tokens_bought,
            "pools": list(self.pools),
            "first_block": self.first_block,
            "last_block": self.last_block,
        }


def wallet_features(
    moves: Iterable[WalletMove], tokens: Mapping[str, TokenSpec]
) -> dict[str, WalletFeatures]:
    """Every wallet's features over ``moves`` (one chain's, any order: sorted here)."""
    ordered = sorted(moves, key=lambda move: move.order)
    # A transfer into or out of a pool is a leg of a swap (or of liquidity) even when it is
    # its own transaction (a trader paying a V2 pair before calling ``swap``): the swap
    # counts it. Pools are not wallets.
    pools = {move.pool for move in ordered if move.pool is not None}
    ordered = [
        move
        for move in ordered
        if move.wallet not in pools and (move.kind == "swap" or move.counterparty not in pools)
    ]
    prices = PriceBook(tokens)
    books: dict[str, _Book] = {}
    # token -> buyers in the order of their first buy
    buyers: dict[str, list[str]] = {}
    span: dict[str, list[int]] = {}
    for move in ordered:
        book = books.setdefault(move.wallet, _Book())
        seen = span.setdefault(move.wallet, [move.block, move.block])
        seen[1] = move.block
        value = prices.observe(move)
        if move.kind == "swap":
            _swap(book, move, value, prices, buyers)
        else:
            _transfer(book, move, prices)
    return {
        wallet: _features(wallet, book, prices, buyers, span[wallet])
        for wallet, book in books.items()
    }


def _swap(
    book: _Book,
    move: WalletMove,
    value: float | None,
    prices: PriceBook,
    buyers: dict[str, list[str]],
) -> None:
    assert move.token_paid is not None
    assert move.token_got is not None
    book.trades += 1
    if move.pool is not None:
        book.pools.add(move.pool)
    if value is None:
        return  # no price reaches this trade yet: it moves no USD figure
    book.volume += value
    paid_units = _units(move.amount_paid, move.token_paid, prices.tokens)
    got_units = _units(move.amount_got, move.token_got, prices.tokens)
    # What was paid leaves at the trade's value: a close when it was a position.
    cost, weighted_since, found = book.take(move.token_paid, paid_units)
    if found > 0 and not prices.fixed(move.token_paid):
        proceeds = value * found / paid_units
        pnl = proceeds - cost
        book.realised += pnl
        book.closed += 1
        book.wins += pnl > 0
        if cost > 0:
            book.held_seconds += cost * move.timestamp - weighted_since
            book.held_weight += cost
    # What was got enters at the trade's value.
    book.lots.setdefault(move.token_got, deque()).append(
        _Lot(got_units, value / got_units, move.timestamp)
    )
    if not prices.fixed(move.token_got):
        book.bought_usd += value
        if move.token_got not in book.first_buys:
            book.first_buys[move.token_got] = value / got_units
            buyers.setdefault(move.token_got, []).append(move.wallet)


def _transfer(book: _Book, move: WalletMove, prices: PriceBook) -> None:
    if move.token_got is not None:
        units = _units(move.amount_got, move.token_got, prices.tokens)
        price = prices.price(move.token_got)
        # Received at today's price (a cost basis of 0 when none is known: it was free).
        book.lots.setdefault(move.token_got, deque()).append(
            _Lot(units, price or 0.0, move.timestamp)
        )
    if move.token_paid is not None:
        # Sent away: the position leaves without a gain or a loss.
        book.take(move.token_paid, _units(move.amount_paid, move.token_paid, prices.tokens))


def _features(
    wallet: str,
    book: _Book,
    prices: PriceBook,
    buyers: Mapping[str, list[str]],
    span: Sequence[int],
) -> WalletFeatures:
    unrealised = 0.0
    for token, lots in book.lots.items():
        price = prices.price(token)
        if price is None or prices.fixed(token):
            continue
        unrealised += sum(lot.units * (price - lot.cost_per_unit) for lot in lots)
    early = 0
    for token, entry_price in book.first_buys.items():
        order = buyers.get(token, [])
        rank = order.index(wallet) if wallet in order else len(order)
        latest = prices.price(token)
        if (
            rank < max(1, math.ceil(EARLY_SHARE * len(order)))
            and latest is not None
            and entry_price > 0
            and latest >= entry_price * (1 + GREW)
        ):
            early += 1
    bought = len(book.first_buys)
    roi = (book.realised + unrealised) / max(book.bought_usd, 1.0)
    return WalletFeatures(
        wallet=wallet,
        realised_pnl_usd=book.realised,
        unrealised_pnl_usd=unrealised,
        roi=roi,
        win_rate=book.wins / book.closed if book.closed else 0.0,
        closed_trades=book.closed,
        trades=book.trades,
        avg_holding_hours=(
            book.held_seconds / book.held_weight / 3_600 if book.held_weight > 0 else 0.0
        ),
        early_entry_share=early / bought if bought else 0.0,
        volume_usd=book.volume,
        bought_usd=book.bought_usd,
        early_entries=early,
        tokens_bought=bought,
        pools=tuple(sorted(book.pools)),
        first_block=span[0],
        last_block=span[1],
    )


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """The default ranking's score and the terms it adds up (``SCORE_FORMULA``)."""

    score: float
    confidence: float
    win_rate_term: float
    early_entry_term: float
    roi_term: float

    def to_json(self) -> dict[str, float]:
        return {
            "confidence": self.confidence,
            "win_rate": self.win_rate_term,
            "early_entry": self.early_entry_term,
            "roi": self.roi_term,
        }


def default_score(features: WalletFeatures) -> ScoreParts:
    """The transparent ranking (``SCORE_FORMULA``): 0..100, recomputable by hand from the
    features; a wallet with few closed trades is held back by ``confidence``."""
    confidence = features.closed_trades / (features.closed_trades + CONFIDENCE_TRADES)
    win = 0.4 * features.win_rate
    early = 0.3 * features.early_entry_share
    roi = 0.3 * (math.tanh(features.roi) + 1) / 2
    return ScoreParts(100 * confidence * (win + early + roi), confidence, win, early, roi)
