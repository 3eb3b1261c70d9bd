"""The MEV follower: runs the detector over what EVM collectors record, records findings.

It follows the log like the anomaly follower (a ``ProjectionRunner`` on a follower of its
own): each ``evm_blocks_recorded`` entry's swap facts go through ``mev.detect`` block by
block, each ``evm_blocks_orphaned`` entry names the block hashes whose detections a reorg
retracts. The steps go to the application, which saves them as ``MevDetected`` /
``MevRetracted`` events of the chain's ``MevLedger`` (on the writer thread, one
transaction); only then is the follower's position stored.

Exactly once, by position: a crash between the two replays the batch; the ledger ignores a
detection at or before the position it last recorded, and a retraction of blocks with no
live detection records nothing. The detector keeps no state across entries (a sandwich
and an arbitrage live in one block), so there is nothing to rebuild on start: the follower
resumes at its stored position. See docs/adr/0050-mev-detection.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .evm_facts import TokenSpec
from .following import PAGE_SIZE, ProjectionRunner
from .log import LogBatch, LogEntry, pending
from .mev import detect
from .ports import EventLog, PositionStore

DEFAULT_NAME: Final = "mev"


@dataclass(frozen=True, slots=True)
class MevStep:
    """What one collector entry (at log ``position``) means for a chain's MEV ledger:
    detections to record, or orphaned block hashes whose detections to retract."""

    chain_id: int
    position: int
    detections: list[dict[str, Any]] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)


RecordMev = Callable[[Sequence[MevStep]], Awaitable[int]]


def steps_of(
    entries: Sequence[LogEntry], tokens: Mapping[int, Mapping[str, TokenSpec]]
) -> list[MevStep]:
    """The ledger steps the collector entries among ``entries`` call for (``tokens``: the
    configured tokens of each chain id, for USD profits)."""
    steps: list[MevStep] = []
    for entry in entries:
        if entry.kind == "evm_blocks_recorded":
            chain_id = int(entry.key)
            found = detect(entry.data["facts"], tokens.get(chain_id, {}))
            if found:
                steps.append(MevStep(chain_id, entry.position, [f.to_json() for f in found]))
        elif entry.kind == "evm_blocks_orphaned":
            hashes = [str(block["hash"]) for block in entry.data["blocks"]]
            steps.append(MevStep(int(entry.key), entry.position, orphaned=hashes))
    return steps


class MevFollower:
    """Follows the log, detects MEV in recorded blocks, records it exactly once."""

    def __init__(
        self,
        event_log: EventLog,
        positions: PositionStore,
        record: RecordMev,
        tokens: Mapping[int, Mapping[str, TokenSpec]] | None = None,
        *,
        name: str = DEFAULT_NAME,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.event_log = event_log
        self.positions = positions
        self.record = record
        self.tokens = dict(tokens or {})
        self.name = name
        self.page_size = page_size
        self._position: int | None = None
        self.recorded = 0  # detections and retractions recorded since start (a counter)

    def runner(self) -> ProjectionRunner:
        return ProjectionRunner(
            self.name, self.event_log, self.position, self.apply, page_size=self.page_size
        )

    async def position(self) -> int:
        """The position detected so far (the stored one, read once)."""
        if self._position is None:
            self._position = await self.positions.load(self.name)
        return self._position

    def forget(self) -> None:
        """Read the stored position again at the next use (another process may have
        detected meanwhile)."""
        self._position = None

    async def apply(self, batch: LogBatch) -> bool:
        """Detect in a batch, record the steps, then store the position."""
        todo = pending(batch, await self.position())
        if todo is None:
            return False
        steps = steps_of(todo.entries, self.tokens)
        try:
            if steps:
                self.recorded += await self.record(steps)
            # Only now: a crash before this line replays the batch, which the ledgers
            # ignore by position (detections) or by what is still live (retractions).
            await self.positions.save(self.name, batch.last)
        except BaseException:
            self._position = None
            raise
        self._position = batch.last
        return True
