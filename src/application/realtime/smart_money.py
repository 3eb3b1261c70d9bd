"""The ``smart-money`` channel: the trades of the wallets ranked in a top N (ADR 0051).

The hub sends at most one frame per log entry and subscription. On this channel the entry
is what an EVM collector recorded: an ``evm_blocks_recorded`` entry (its swaps: each a
trade of its recipient, as the wallet moves count it) or an ``evm_blocks_orphaned`` entry
(the block hashes a reorg orphaned). What a subscriber gets of it depends on its filter
(``top``, ``wallet``, ``chainId``, ``ranking``), so a ``SmartMoneyTape`` reads the entry's
swaps once and encodes one frame per distinct filter: subscribers with the same filter
share it, as they share an update on the other channels. A recorded entry with no trade
for a filter sends that subscriber nothing; an orphaned one goes to every subscriber of
its chain (the client drops what it holds of those blocks).

The ranking is not computed per swap: ``SmartMoneyWatch`` keeps each chain's top
``MAX_TOP`` wallets by the default score (and by the model when one is trained), refreshed
every ``SMART_MONEY_WS_REFRESH`` seconds from the history read model's wallet moves, off
the event loop. A frame names the wallets as ranked at the last refresh, which counts the
moves the history read model had applied by then; a replay (``since``, or a client that
fell behind) uses the ranking of the moment it reads the entry, not the one of the moment
the trade was recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..log import EVM_KINDS, LogEntry
from ..smart_money import WalletMove, moves_of
from ..smart_money_reader import SmartMoneyReader
from .frames import Encoded
from .protocol import MAX_TOP, SMART_MONEY, SmartMoneyFilter, dumps

log = logging.getLogger(__name__)

RECORDED, ORPHANED = EVM_KINDS
DEFAULT_REFRESH: Final = 30.0
_PREFIX: Final = b'{"type":"smart-money","subscriptionId":"'
_EVERY: Final = SmartMoneyFilter()


@dataclass(frozen=True, slots=True)
class Leaders:
    """One chain's top wallets by one ranking, as of one refresh: wallet → (rank, score)."""

    chain_id: int
    ranking: str
    ranked_at: float
    places: Mapping[str, tuple[int, float]]

    @classmethod
    def of(
        cls, chain_id: int, ranking: str, ranked_at: float, scores: Sequence[tuple[str, float]]
    ) -> Leaders:
        """From ``(wallet, score)`` pairs, best first."""
        places = {wallet: (rank, score) for rank, (wallet, score) in enumerate(scores, start=1)}
        return cls(chain_id, ranking, ranked_at, places)


class SmartMoneyWatch:
    """The current top wallets of every chain followed, for the ``smart-money`` channel.

    ``reader`` None (or following no chain): the channel is not served here.
    """

    def __init__(
        self,
        reader: SmartMoneyReader | None,
        *,
        max_top: int = MAX_TOP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reader = reader
        self.max_top = max_top
        self.clock = clock
        self.refreshes = 0
        # Replaced whole (never mutated): a tape keeps the one it started with.
        self._leaders: dict[tuple[int, str], Leaders] = {}

    @property
    def serving(self) -> bool:
        return self.reader is not None and bool(self.reader.tokens)

    def leaders(self, chain_id: int, ranking: str) -> Leaders | None:
        return self._leaders.get((chain_id, ranking))

    def update(self, leaders: Iterable[Leaders]) -> None:
        """Replace the ranking (what ``refresh`` computed)."""
        self._leaders = {(found.chain_id, found.ranking): found for found in leaders}
        self.refreshes += 1

    def refresh(self) -> None:
        """Rank every chain followed from the stored wallet moves (blocking: a thread)."""
        reader = self.reader
        if reader is None:
            return
        ranked_at = self.clock()
        self.update(
            Leaders.of(chain_id, ranking, ranked_at, scores)
            for chain_id in sorted(reader.tokens)
            for ranking, scores in reader.leaders(chain_id, self.max_top).items()
        )

    async def run(
        self,
        interval: float = DEFAULT_REFRESH,
        offload: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        """Refresh now, then every ``interval`` seconds, until cancelled (a ranking under
        way is waited for: its read ends before the store closes)."""
        while True:
            ranking = asyncio.ensure_future(offload(self.refresh))
            try:
                await asyncio.shield(ranking)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await ranking
                raise
            except Exception:
                log.exception("ranking smart money failed; the previous ranking stays")
            await asyncio.sleep(interval)

    def tape(self, entry: LogEntry) -> SmartMoneyTape:
        """The frames of one collector entry, by the ranking as of now."""
        return SmartMoneyTape(entry, self._leaders)


class SmartMoneyTape:
    """One collector entry's ``smart-money`` frames, one per distinct filter."""

    def __init__(self, entry: LogEntry, leaders: Mapping[tuple[int, str], Leaders]) -> None:
        self.entry = entry
        self.chain_id = int(entry.key)
        self._leaders = leaders
        self._swaps: list[WalletMove] | None = None
        self._frames: dict[SmartMoneyFilter, Encoded | None] = {}

    def frame(self, wanted: SmartMoneyFilter | None) -> Encoded | None:
        """The frame a subscriber with filter ``wanted`` gets (None: nothing for it)."""
        wanted = wanted or _EVERY
        if wanted.chain_id is not None and wanted.chain_id != self.chain_id:
            return None
        if wanted not in self._frames:
            data = self._data(wanted)
            self._frames[wanted] = None if data is None else _encode(self.entry.position, data)
        return self._frames[wanted]

    def trades(self, wanted: SmartMoneyFilter) -> list[dict[str, Any]]:
        """The entry's trades by wallets in ``wanted``'s top, in chain order."""
        leaders = self._leaders.get((self.chain_id, wanted.ranking))
        if leaders is None or self.entry.kind != RECORDED:
            return []
        if self._swaps is None:
            data = self.entry.data
            self._swaps = [
                move
                for move in moves_of(self.chain_id, data["blocks"], data["facts"])
                if move.kind == "swap"
            ]
        found: list[dict[str, Any]] = []
        for move in self._swaps:
            place = leaders.places.get(move.wallet)
            if place is None or place[0] > wanted.top:
                continue
            if wanted.wallet is not None and move.wallet != wanted.wallet:
                continue
            found.append(_trade(move, *place))
        return found

    def _data(self, wanted: SmartMoneyFilter) -> dict[str, Any] | None:
        entry = self.entry
        if entry.kind == ORPHANED:
            hashes = [str(block["hash"]) for block in entry.data["blocks"]]
            return {"chainId": self.chain_id, "retracted": True, "blockHashes": hashes}
        trades = self.trades(wanted)
        if not trades:
            return None
        leaders = self._leaders[(self.chain_id, wanted.ranking)]
        return {
            "chainId": self.chain_id,
            "retracted": False,
            "ranking": wanted.ranking,
            "rankedAt": leaders.ranked_at,
            "trades": trades,
        }


def _trade(move: WalletMove, rank: int, score: float) -> dict[str, Any]:
    return {
        "wallet": move.wallet,
        "rank": rank,
        "score": score,
        "block": move.block,
        "blockHash": move.block_hash,
        "timestamp": move.timestamp,
        "txHash": move.tx_hash,
        "logIndex": move.log_index,
        "pool": move.pool,
        "tokenPaid": move.token_paid,
        "amountPaid": str(move.amount_paid),
        "tokenGot": move.token_got,
        "amountGot": str(move.amount_got),
    }


def _encode(position: int, data: dict[str, Any]) -> Encoded:
    return _PREFIX, b'",' + dumps({"channel": SMART_MONEY, "position": position, "data": data})[1:]
