"""The EvmChain aggregate: what a collector recorded from one EVM chain, block by block.

One aggregate per chain id. It holds the collector's cursor (the last recorded block and the
hashes of the recent ones, to check each new block's parent), the pool reserves and the
protocol TVLs as of each recent block, and records two facts:

* ``BlocksRecorded``: a contiguous run of blocks (number, hash, parent hash, timestamp), the
  decoded logs of those blocks (swaps, syncs, mints, burns, transfers) and the TVL each
  protocol had after them. Saved in the same transaction as the protocols' ``tvl``
  observations, so a collector that crashes resumes from the last recorded block and
  records nothing twice.
* ``BlocksOrphaned``: a reorganisation replaced recorded blocks from ``from_number`` on. The
  blocks (and every fact recorded with them) are retracted; the state goes back to what it
  was after the fork point, and the event says which TVL observations the protocols must
  retract and to which value (the TVL at the fork point). Nothing is edited: a retraction is
  a new fact.

Only the last ``window`` blocks are kept for reorg checks: a reorg deeper than that is
refused (``ReorgTooDeep``), never silently applied.
"""

from __future__ import annotations

from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import DomainError

EVM_CHAIN_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://defi-realtime/evm-chain/")
DEFAULT_REORG_WINDOW: Final = 256
# Kinds of decoded log a block carries (``facts``); a swap is what the MEV detector reads.
FACT_KINDS: Final = frozenset({"swap", "sync", "mint", "burn", "transfer"})


class ReorgDetected(DomainError):
    """The first new block does not extend the last recorded one (its parent hash differs)."""


class ReorgTooDeep(DomainError):
    """A reorganisation reaches below the blocks kept for checking: it cannot be retracted."""


def tvl_key(protocol: str, chain: str) -> str:
    """The key of a protocol's TVL on a chain in ``EvmChain`` state and events."""
    return f"{protocol}@{chain}"


class EvmChain(Aggregate):
    """The blocks a collector recorded from one chain (id: the chain id)."""

    @staticmethod
    def create_id(chain_id: int, *_: Any, **__: Any) -> UUID:
        return EvmChain.id_for(chain_id)

    @staticmethod
    def id_for(chain_id: int) -> UUID:
        return uuid5(EVM_CHAIN_NAMESPACE, str(chain_id))

    @event("Opened")
    def __init__(
        self,
        chain_id: int,
        name: str,
        start_block: int,
        window: int,
        reserves: dict[str, list[str]] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self.name = name
        self.window = window
        self.head = start_block - 1  # the last recorded block (start - 1: none yet)
        # number -> hash of the recent recorded blocks (at most ``window``).
        self.hashes: dict[int, str] = {}
        # What was true before the oldest kept block, and what each kept block changed.
        self.base_reserves: dict[str, list[str]] = dict(reserves or {})
        self.base_tvl: dict[str, float] = {}
        self.reserves_by_block: dict[int, dict[str, list[str]]] = {}
        self.tvl_by_block: dict[int, dict[str, float]] = {}
        # number -> the TVL observations recorded with that block: key -> observed_at.
        self.observed_by_block: dict[int, dict[str, float]] = {}

    @classmethod
    def open(
        cls,
        chain_id: int,
        name: str,
        start_block: int,
        window: int = DEFAULT_REORG_WINDOW,
        reserves: dict[str, list[str]] | None = None,
    ) -> EvmChain:
        """Start following ``chain_id`` from ``start_block``; ``reserves``: each pool's
        token balances before that block (pool -> [amount0, amount1], decimal strings)."""
        if chain_id <= 0 or start_block < 0 or window < 2:
            raise DomainError(
                f"invalid chain {chain_id} / start block {start_block} / window {window}"
            )
        return cls(
            chain_id=chain_id,
            name=name,
            start_block=start_block,
            window=window,
            reserves=reserves or {},
        )

    # -- reading the state ---------------------------------------------------------------

    def reserves(self, pool: str) -> tuple[int, int] | None:
        """The pool's reserves after the last recorded block (None: none seen)."""
        for number in sorted(self.reserves_by_block, reverse=True):
            found = self.reserves_by_block[number].get(pool)
            if found is not None:
                return int(found[0]), int(found[1])
        base = self.base_reserves.get(pool)
        return None if base is None else (int(base[0]), int(base[1]))

    def tvl(self, key: str) -> float | None:
        """A protocol's TVL on the chain after the last recorded block (``tvl_key``)."""
        for number in sorted(self.tvl_by_block, reverse=True):
            found = self.tvl_by_block[number].get(key)
            if found is not None:
                return found
        return self.base_tvl.get(key)

    # -- commands ------------------------------------------------------------------------

    def record_blocks(
        self,
        blocks: list[dict[str, Any]],
        facts: list[dict[str, Any]],
        reserves: dict[int, dict[str, list[str]]],
        tvl: list[dict[str, Any]],
    ) -> None:
        """Record blocks ``head + 1 ..`` with their decoded logs (``facts``), the pool
        reserves each block left (number -> pool -> [reserve0, reserve1] as decimal strings)
        and the TVL observations made from them (``protocol``, ``chain``, ``value``,
        ``observed_at``, ``block``). Raises ``ReorgDetected`` when the first block's parent
        is not the last recorded block."""
        if not blocks:
            return
        expected = self.head + 1
        parent = self.hashes.get(self.head)
        for block in blocks:
            if int(block["number"]) != expected:
                raise DomainError(
                    f"block {block['number']} recorded out of order (want {expected})"
                )
            if parent is not None and block["parent_hash"] != parent:
                raise ReorgDetected(
                    f"block {expected}'s parent {block['parent_hash']} is not the recorded "
                    f"block {expected - 1} ({parent})"
                )
            parent = str(block["hash"])
            expected += 1
        for fact in facts:
            if fact.get("kind") not in FACT_KINDS:
                raise DomainError(f"unknown fact kind {fact.get('kind')!r}")
        self._blocks_recorded(
            chain_id=self.chain_id,
            blocks=blocks,
            facts=facts,
            reserves={str(number): pools for number, pools in reserves.items()},
            tvl=tvl,
        )

    @event("BlocksRecorded")
    def _blocks_recorded(
        self,
        chain_id: int,
        blocks: list[dict[str, Any]],
        facts: list[dict[str, Any]],
        reserves: dict[str, dict[str, list[str]]],
        tvl: list[dict[str, Any]],
    ) -> None:
        for block in blocks:
            number = int(block["number"])
            self.hashes[number] = str(block["hash"])
            self.head = number
        for key, pools in reserves.items():
            self.reserves_by_block.setdefault(int(key), {}).update(pools)
        for observation in tvl:
            number = int(observation["block"])
            key = tvl_key(str(observation["protocol"]), str(observation["chain"]))
            self.tvl_by_block.setdefault(number, {})[key] = float(observation["value"])
            self.observed_by_block.setdefault(number, {})[key] = float(observation["observed_at"])
        self._trim()

    def _trim(self) -> None:
        """Fold blocks older than the window into the base state."""
        oldest = self.head - self.window + 1
        for number in sorted(n for n in self.hashes if n < oldest):
            del self.hashes[number]
            self.base_reserves.update(self.reserves_by_block.pop(number, {}))
            self.base_tvl.update(self.tvl_by_block.pop(number, {}))
            self.observed_by_block.pop(number, None)

    def recorded_hash(self, number: int) -> str | None:
        """The hash recorded for block ``number`` (None: not kept or not recorded)."""
        return self.hashes.get(number)

    def orphan_from(self, from_number: int) -> list[dict[str, Any]]:
        """Retract the recorded blocks ``from_number ..`` (a reorg replaced them); the TVL
        observations to retract, each with the value to restore (the TVL after block
        ``from_number - 1``, 0.0 where none was known then)."""
        if from_number > self.head:
            return []
        if from_number not in self.hashes:  # folded into the base state: cannot be undone
            raise ReorgTooDeep(
                f"chain {self.chain_id}: a reorg from block {from_number} reaches below the "
                f"{len(self.hashes)} kept blocks (oldest {min(self.hashes, default=None)})"
            )
        orphaned = sorted(n for n in self.hashes if n >= from_number)
        kept_tvl = dict(self.base_tvl)
        for number in sorted(n for n in self.tvl_by_block if n < from_number):
            kept_tvl.update(self.tvl_by_block[number])
        retractions: dict[tuple[str, float], dict[str, Any]] = {}
        for number in orphaned:
            for key, observed_at in self.observed_by_block.get(number, {}).items():
                protocol, _, chain = key.partition("@")
                retractions[(key, observed_at)] = {
                    "protocol": protocol,
                    "chain": chain,
                    "observed_at": observed_at,
                    "value": kept_tvl.get(key, 0.0),
                }
        restored = list(retractions.values())
        self._blocks_orphaned(
            chain_id=self.chain_id,
            from_number=from_number,
            blocks=[{"number": n, "hash": self.hashes[n]} for n in orphaned],
            tvl_restored=restored,
        )
        return restored

    @event("BlocksOrphaned")
    def _blocks_orphaned(
        self,
        chain_id: int,
        from_number: int,
        blocks: list[dict[str, Any]],
        tvl_restored: list[dict[str, Any]],
    ) -> None:
        for block in blocks:
            number = int(block["number"])
            self.hashes.pop(number, None)
            self.reserves_by_block.pop(number, None)
            self.tvl_by_block.pop(number, None)
            self.observed_by_block.pop(number, None)
        self.head = from_number - 1
