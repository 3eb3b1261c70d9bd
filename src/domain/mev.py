"""The MevLedger aggregate: the MEV found on one EVM chain, as auditable facts.

One ledger per chain id, its id derived from the chain id, so whoever detects (a restarted
follower, another node after a takeover, a replay from position 0) appends to the same
aggregate. Two facts:

* ``MevDetected``: a sandwich or a cyclic arbitrage in a block (kind, block number and hash,
  pool, actor, victim, the quote token and the profit in it and in USD, the transactions).
  It carries the log position of the ``evm_blocks_recorded`` entry behind it: a detection at
  or before the last position recorded was already handled, so a replay records nothing
  twice.
* ``MevRetracted``: a reorg orphaned the blocks the detections were in (by block hash); read
  models and streams drop them. Retracting a block with no live detection records nothing.
"""

from __future__ import annotations

import math
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import DomainError

MEV_LEDGER_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://defi-realtime/mev-ledger/")
DETECTION_KINDS: Final = frozenset({"sandwich", "arbitrage"})
# Block hashes whose live detections are kept for retraction: as deep as a collector
# accepts a reorg (domain/evm.py DEFAULT_REORG_WINDOW).
RETRACTION_WINDOW: Final = 256


class MevLedger(Aggregate):
    """The MEV detections of one chain (id: from the chain id)."""

    @staticmethod
    def create_id(chain_id: int, *_: Any, **__: Any) -> UUID:
        return MevLedger.id_for(chain_id)

    @staticmethod
    def id_for(chain_id: int) -> UUID:
        return uuid5(MEV_LEDGER_NAMESPACE, str(chain_id))

    @event("Opened")
    def __init__(self, chain_id: int) -> None:
        self.chain_id = chain_id
        self.detections = 0
        self.retractions = 0
        # Log position of the collector entry behind the last detection (0: none yet).
        self.last_position = 0
        # block hash -> (block number, keys of its live detections), the recent blocks only.
        self.live: dict[str, tuple[int, list[str]]] = {}

    @classmethod
    def open(cls, chain_id: int) -> MevLedger:
        if chain_id <= 0:
            raise DomainError(f"invalid chain id {chain_id}", field="chain_id")
        return cls(chain_id=chain_id)

    def detect(self, detections: list[dict[str, Any]], position: int) -> bool:
        """Record the detections found in the collector entry at log ``position``; False
        (nothing recorded) when there are none or that position was already handled."""
        if not detections or position <= self.last_position:
            return False
        for found in detections:
            if found.get("kind") not in DETECTION_KINDS:
                raise DomainError(f"unknown MEV kind {found.get('kind')!r}", field="kind")
            usd = found.get("profit_usd")
            if int(found["profit"]) <= 0 or (usd is not None and not math.isfinite(usd)):
                raise DomainError("an MEV detection's profit must be positive and finite")
        for found in detections:
            self._detected(chain_id=self.chain_id, position=position, **found)
        return True

    @event("MevDetected")
    def _detected(
        self,
        chain_id: int,
        position: int,
        key: str,
        kind: str,
        block: int,
        block_hash: str,
        pool: str,
        actor: str,
        victim: str | None,
        quote_token: str,
        profit: str,
        profit_quote: float,
        profit_usd: float | None,
        tx_hashes: list[str],
        pools: list[str],
    ) -> None:
        self.detections += 1
        self.last_position = position
        number, keys = self.live.get(block_hash, (block, []))
        self.live[block_hash] = (number, [*keys, key])
        newest = max(n for n, _ in self.live.values())
        for stale in [h for h, (n, _) in self.live.items() if n <= newest - RETRACTION_WINDOW]:
            del self.live[stale]

    def retract(self, block_hashes: list[str]) -> list[str]:
        """Retract every live detection in the blocks ``block_hashes`` (a reorg orphaned
        them); the keys retracted (none: nothing recorded)."""
        keys = [key for h in block_hashes for key in self.live.get(h, (0, []))[1]]
        if keys:
            self._retracted(
                chain_id=self.chain_id,
                block_hashes=[h for h in block_hashes if h in self.live],
                keys=keys,
            )
        return keys

    @event("MevRetracted")
    def _retracted(self, chain_id: int, block_hashes: list[str], keys: list[str]) -> None:
        self.retractions += len(keys)
        for block_hash in block_hashes:
            self.live.pop(block_hash, None)
