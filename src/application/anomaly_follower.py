"""The anomaly follower: runs the detector over the log and records what it finds.

It follows the log like the alert evaluator (a ``ProjectionRunner`` on a follower of its
own, elected when several nodes share the stores): for each batch it folds the metric and
price entries into ``AnomalyDetector`` and sends the detections to the application, which
saves them as ``AnomalyDetected`` events of the series' ``AnomalyLog`` (on the writer
thread, one transaction); only then is the follower's position stored.

Exactly once, by position: a crash between the two replays the batch, and each
``AnomalyLog`` ignores a detection at or before the position it last recorded. Resumable
and rebuildable: the detector's state is a deterministic fold of the log, so on start the
follower folds the log up to its stored position without recording (the same state it
had), and a rebuild (position 0) finds the same detections again, which record nothing.
With a ``Checkpointer`` it starts that fold from its last checkpoint instead of position 0
(a checkpoint is written only at positions already stored, so it is never ahead of the
stored position; ADR 0046). See docs/adr/0034-streaming-anomaly-detection.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from . import anomaly_checkpoint
from .anomaly import AnomalyDetector, Detection, DetectorSettings
from .checkpoints import Capture, Checkpointer
from .following import PAGE_SIZE, ProjectionRunner
from .log import LogBatch, pending
from .ports import EventLog, PositionStore

log = logging.getLogger(__name__)

DEFAULT_NAME: Final = "anomalies"

RecordAnomalies = Callable[[Sequence[Detection]], Awaitable[int]]


class AnomalyFollower:
    """Follows the log, detects anomalies, records them exactly once."""

    def __init__(
        self,
        event_log: EventLog,
        positions: PositionStore,
        record: RecordAnomalies,
        settings: DetectorSettings | None = None,
        *,
        name: str = DEFAULT_NAME,
        page_size: int = PAGE_SIZE,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.event_log = event_log
        self.positions = positions
        self.record = record
        self.settings = settings or DetectorSettings()
        self.name = name
        self.page_size = page_size
        self.detector = AnomalyDetector(self.settings)
        self._position = 0
        self._started = False
        self.recorded = 0  # detections recorded since start (a counter)
        self.checkpointer = checkpointer
        if checkpointer is not None:
            checkpointer.capture = self._capture

    def runner(self) -> ProjectionRunner:
        return ProjectionRunner(
            self.name, self.event_log, self.position, self.apply, page_size=self.page_size
        )

    async def position(self) -> int:
        """The position detected so far; the first call rebuilds the detector's state."""
        if not self._started:
            await self.start()
        return self._position

    def forget(self) -> None:
        """Drop the in-memory state: the next use folds the log again (after a failure,
        or when another process may have detected meanwhile)."""
        self._started = False

    async def start(self) -> None:
        """Fold the log up to the stored position into a fresh detector, recording
        nothing: the state the follower had when it stored that position."""
        position = await self.positions.load(self.name)
        detector, cursor = await self._from_checkpoint(position)
        folded_from = cursor
        while cursor < position:
            batch = await asyncio.to_thread(
                self.event_log.read, cursor, min(self.page_size, position - cursor)
            )
            if batch.last == cursor:
                break
            for _ in detector.fold(batch.entries):
                pass
            cursor = batch.last
        self.detector = detector
        self._position = position
        self._started = True
        log.info(
            "anomaly detector at %d (folded from %d): %d series",
            position,
            folded_from,
            len(detector),
        )

    async def _from_checkpoint(self, position: int) -> tuple[AnomalyDetector, int]:
        """The checkpoint's detector and position when one fits (at or before
        ``position``, same settings); else a fresh detector at 0."""
        fresh = AnomalyDetector(self.settings), 0
        if self.checkpointer is None:
            return fresh
        found = await self.checkpointer.load()
        if found is None or found.position > position:
            return fresh
        try:
            detector = await asyncio.to_thread(anomaly_checkpoint.decode, self.settings, found.body)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as error:
            log.warning("anomaly checkpoint unusable, folding the log: %s", error)
            return fresh
        if detector is None:
            log.info("anomaly checkpoint of other detector settings: folding the log")
            return fresh
        return detector, found.position

    def _capture(self) -> Capture | None:
        if not self._started:
            return None  # never started, or folded entries it did not store: untrustworthy
        return anomaly_checkpoint.snapshot(self.detector, self._position)

    async def close(self) -> None:
        """Write the final checkpoint (a clean shutdown)."""
        if self.checkpointer is not None:
            await self.checkpointer.flush()

    async def apply(self, batch: LogBatch) -> bool:
        """Detect in a batch, record the detections, then store the position."""
        if not self._started:
            await self.start()
        todo = pending(batch, self._position)
        if todo is None:
            return False
        try:
            detections = list(self.detector.fold(todo.entries))
            if detections:
                self.recorded += await self.record(detections)
            # Only now: a crash before this line replays the batch, which the anomaly
            # logs ignore by position.
            await self.positions.save(self.name, batch.last)
        except BaseException:
            # The detector has folded entries whose position was not stored: rebuild.
            self._started = False
            raise
        self._position = batch.last
        if self.checkpointer is not None:
            self.checkpointer.advanced(batch.last)
        return True
