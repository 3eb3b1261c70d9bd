"""The AnomalyLog aggregate: the anomalies found in one series, as auditable facts.

One log per series (``protocol:<slug>:<metric>:total`` or ``token:<id>``), its id derived
from the series name, so that whoever detects (a restarted follower, another node after a
takeover, a replay from position 0) appends to the same aggregate. Each detection carries
the log position of the observation behind it; a position at or before the last one
recorded was already detected and is ignored, so replaying the log records nothing twice.
"""

from __future__ import annotations

import math
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import InvalidObservation

ANOMALY_LOG_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://defi-realtime/anomaly-log/")
DIRECTIONS: Final = frozenset({"fall", "rise"})


class AnomalyLog(Aggregate):
    """The detections of one series, in the order they were made."""

    @staticmethod
    def create_id(series: str, *_: Any, **__: Any) -> UUID:
        return uuid5(ANOMALY_LOG_NAMESPACE, series)

    @staticmethod
    def id_for(series: str) -> UUID:
        return uuid5(ANOMALY_LOG_NAMESPACE, series)

    @event("Opened")
    def __init__(self, series: str, subject: str, measure: str) -> None:
        self.series = series
        self.subject = subject  # the protocol slug or token id
        self.measure = measure
        self.detections = 0
        # Log position of the observation behind the last detection (0: none yet).
        self.last_position = 0

    @classmethod
    def open(cls, series: str, subject: str, measure: str) -> AnomalyLog:
        return cls(series=series, subject=subject, measure=measure)

    def detect(
        self,
        observed_at: float,
        value: float,
        score: float,
        direction: str,
        reason: str,
        position: int,
    ) -> bool:
        """Record that the observation at log ``position`` is anomalous; False (nothing
        recorded) if that position was already handled."""
        if position <= self.last_position:
            return False
        if not (math.isfinite(score) and score >= 0 and math.isfinite(value)):
            raise InvalidObservation("an anomaly's score and value must be finite")
        if direction not in DIRECTIONS:
            raise InvalidObservation(f"direction must be one of {sorted(DIRECTIONS)}")
        self._detected(
            series=self.series,
            subject=self.subject,
            measure=self.measure,
            observed_at=observed_at,
            value=value,
            score=score,
            direction=direction,
            reason=reason,
            position=position,
        )
        return True

    @event("AnomalyDetected")
    def _detected(
        self,
        series: str,
        subject: str,
        measure: str,
        observed_at: float,
        value: float,
        score: float,
        direction: str,
        reason: str,
        position: int,
    ) -> None:
        self.detections += 1
        self.last_position = position
