"""Online anomaly detection per series: pure, bounded state, one observation at a time.

A series is a protocol metric in total (``protocol:<slug>:<metric>:total``) or a token's
price (``token:<id>``), named like the alert targets. Observations arrive irregularly in
time (daily history, minute-level live data), so the detector looks at **log returns per
unit of time**: ``r = ln(v / v_prev) / sqrt(dt / 1 day)`` (a random walk's returns grow
with the square root of the time between points, so a daily and a minute return are on one
scale). ``dt`` is at least ``MIN_STEP`` seconds, so that two points a second apart cannot
turn rounding noise into a huge rate.

Two methods share that input (docs/adr/0034-streaming-anomaly-detection.md compares them
on the real TVL crashes):

* ``RobustZScore`` (the default): the score of a return is its distance from the median of
  the last ``window`` returns, in robust standard deviations (1.4826 x MAD, floored at
  ``min_scale``). Median and MAD ignore the outliers they are meant to find.
* ``Cusum``: a two-sided CUSUM (Page's change-point test) of returns standardised by an
  exponentially weighted mean and variance; its score is the accumulated drift in
  standard deviations, so a slow bleed adds up where no single step stands out.

Like the domain: an observation not newer than the series' current one (a duplicate, a
correction of the current point or a late point) is ignored; only a newer point moves the
series and is scored. State per series is a fixed number of floats (``__slots__`` and a
fixed-size ring), whatever the length of its history.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from .log import LogEntry

Method = Literal["robust_z", "cusum"]
METHODS: Final[tuple[Method, ...]] = ("robust_z", "cusum")
DAY: Final = 86_400.0
MIN_STEP: Final = 60.0
# 1.4826 x MAD estimates the standard deviation of a normal distribution.
MAD_SIGMA: Final = 1.4826
# A value this small relative to its neighbour counts as zero (a log return needs > 0).
_ZERO: Final = 1e-6
# The measures the detector follows: TVL, the 24 h flows and prices (TVL sections, e.g.
# ``tvl:staking``, follow their TVL and are left out).
MEASURES: Final = frozenset({"tvl", "volume_24h", "fees_24h", "price"})


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """How the detector scores, and from which score a point is an anomaly."""

    method: Method = "robust_z"
    window: int = 30  # returns kept per series (robust_z) / EWMA span (cusum)
    warmup: int = 10  # returns seen before a series is scored
    min_scale: float = 0.02  # floor of the return scale (per sqrt(day)): 2 %
    threshold: float = 6.0  # score from which a point is recorded as an anomaly
    drift: float = 0.5  # cusum: slack per step, in standard deviations

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.window < 3 or self.warmup < 2 or self.warmup > 10_000:
            raise ValueError("window must be at least 3 and warmup at least 2")
        if not (self.min_scale > 0 and self.threshold > 0 and self.drift >= 0):
            raise ValueError("min_scale and threshold must be positive, drift non-negative")


@dataclass(frozen=True, slots=True)
class Score:
    """How unusual one observation is: ``score`` >= 0 in standard deviations, ``direction``
    of the move, ``rate`` the log return per sqrt(day) that was scored."""

    score: float
    direction: Literal["fall", "rise"]
    rate: float
    change: float  # the step's change, in percent of the previous value

    def reason(self, method: Method) -> str:
        """A sentence a person reads in an alert or the API."""
        move = f"{self.direction} of {abs(self.change):.1f}%"
        if method == "cusum":
            return f"{move}: a drift of {self.score:.1f} sd accumulated (CUSUM)"
        return f"{move}: {self.score:.1f} robust sd from the recent median return"


class SeriesDetector(Protocol):
    """One series' state; ``observe`` returns the point's score (None: not scored)."""

    def observe(self, observed_at: float, value: float) -> Score | None: ...

    def dump(self) -> SeriesDump:
        """The state as plain values (a checkpoint's; ``restore_detector`` reads it)."""
        ...


@dataclass(frozen=True, slots=True)
class SeriesDump:
    """A series detector's state as values: the last point, the returns seen, and the
    method's own numbers (the ring of returns and its cursor, or CUSUM's four sums)."""

    last_at: float
    last_value: float
    count: int
    cursor: int
    numbers: bytes  # array('d') bytes


def _percent(previous: float, value: float) -> float:
    return (value - previous) / previous * 100.0 if previous else 100.0


def _rate(previous: float, value: float, dt: float) -> float:
    """The log return from ``previous`` to ``value`` per sqrt(day)."""
    floor = _ZERO * max(previous, value)
    if floor == 0.0:
        return 0.0  # zero to zero: no move
    step = math.log((value + floor) / (previous + floor))
    return step / math.sqrt(max(dt, MIN_STEP) / DAY)


class RobustZScore:
    """Median/MAD of the last ``window`` returns; score = |r - median| / (1.4826 MAD)."""

    __slots__ = ("_count", "_next", "_ring", "_sorted", "last_at", "last_value", "settings")

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.last_at = -math.inf
        self.last_value = 0.0
        self._ring = array("d", bytes(8 * settings.window))  # the window, oldest overwritten
        self._sorted: list[float] = []  # the same returns, sorted (median in O(1))
        self._next = 0
        self._count = 0  # returns seen (only compared with warmup)

    def observe(self, observed_at: float, value: float) -> Score | None:
        if observed_at <= self.last_at:
            return None  # not newer than the current point: history only, like the domain
        previous, previous_at = self.last_value, self.last_at
        self.last_at, self.last_value = observed_at, value
        if previous_at == -math.inf:
            return None  # the first point: nothing to compare with
        rate = _rate(previous, value, observed_at - previous_at)
        settings = self.settings
        ordered = self._sorted
        score: Score | None = None
        if self._count >= settings.warmup:
            size = len(ordered)
            half = size // 2
            median = ordered[half] if size % 2 else (ordered[half - 1] + ordered[half]) / 2
            deviations = sorted([abs(x - median) for x in ordered])
            mad = deviations[half] if size % 2 else (deviations[half - 1] + deviations[half]) / 2
            scale = max(MAD_SIGMA * mad, settings.min_scale)
            distance = (rate - median) / scale
            score = Score(
                abs(distance),
                "fall" if distance < 0 else "rise",
                rate,
                _percent(previous, value),
            )
        # Into the window: replace the oldest return once full.
        if len(ordered) == settings.window:
            oldest = self._ring[self._next]
            del ordered[bisect.bisect_left(ordered, oldest)]
        self._ring[self._next] = rate
        self._next = (self._next + 1) % settings.window
        bisect.insort(ordered, rate)
        self._count += 1
        return score

    def dump(self) -> SeriesDump:
        return SeriesDump(
            self.last_at, self.last_value, self._count, self._next, self._ring.tobytes()
        )

    @classmethod
    def restore(cls, settings: DetectorSettings, dump: SeriesDump) -> RobustZScore:
        detector = cls(settings)
        ring = array("d")
        ring.frombytes(dump.numbers)
        if len(ring) != settings.window or not 0 <= dump.cursor < settings.window:
            raise ValueError("a ring of another window")
        detector.last_at, detector.last_value = dump.last_at, dump.last_value
        detector._ring, detector._next, detector._count = ring, dump.cursor, dump.count
        # The sorted window is the ring's filled part (all of it once the window is full).
        detector._sorted = sorted(ring[: min(dump.count, settings.window)])
        return detector


class Cusum:
    """Two-sided CUSUM of returns standardised by an EWMA mean and variance."""

    __slots__ = ("_count", "_high", "_low", "_mean", "_var", "last_at", "last_value", "settings")

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.last_at = -math.inf
        self.last_value = 0.0
        self._mean = 0.0
        self._var = 0.0
        self._high = 0.0
        self._low = 0.0
        self._count = 0

    def observe(self, observed_at: float, value: float) -> Score | None:
        if observed_at <= self.last_at:
            return None
        previous, previous_at = self.last_value, self.last_at
        self.last_at, self.last_value = observed_at, value
        if previous_at == -math.inf:
            return None
        rate = _rate(previous, value, observed_at - previous_at)
        settings = self.settings
        score: Score | None = None
        if self._count >= settings.warmup:
            scale = max(math.sqrt(self._var), settings.min_scale)
            z = (rate - self._mean) / scale
            self._high = max(0.0, self._high + z - settings.drift)
            self._low = max(0.0, self._low - z - settings.drift)
            falling = self._low >= self._high
            drift = self._low if falling else self._high
            score = Score(
                drift,
                "fall" if falling else "rise",
                rate,
                _percent(previous, value),
            )
            if drift >= settings.threshold:
                # A detected change: start accumulating afresh from the new level.
                self._high = self._low = 0.0
        alpha = 2.0 / (settings.window + 1)
        if self._count == 0:
            self._mean = rate
        else:
            delta = rate - self._mean
            self._mean += alpha * delta
            self._var = (1 - alpha) * (self._var + alpha * delta * delta)
        self._count += 1
        return score

    def dump(self) -> SeriesDump:
        sums = array("d", (self._mean, self._var, self._high, self._low))
        return SeriesDump(self.last_at, self.last_value, self._count, 0, sums.tobytes())

    @classmethod
    def restore(cls, settings: DetectorSettings, dump: SeriesDump) -> Cusum:
        detector = cls(settings)
        sums = array("d")
        sums.frombytes(dump.numbers)
        if len(sums) != 4:
            raise ValueError("CUSUM keeps four sums")
        detector.last_at, detector.last_value, detector._count = (
            dump.last_at,
            dump.last_value,
            dump.count,
        )
        detector._mean, detector._var, detector._high, detector._low = sums
        return detector


def new_detector(settings: DetectorSettings) -> SeriesDetector:
    return Cusum(settings) if settings.method == "cusum" else RobustZScore(settings)


def restore_detector(settings: DetectorSettings, dump: SeriesDump) -> SeriesDetector:
    """The series detector ``dump`` describes (``ValueError``: not one of ``settings``)."""
    if settings.method == "cusum":
        return Cusum.restore(settings, dump)
    return RobustZScore.restore(settings, dump)


@dataclass(frozen=True, slots=True)
class Detection:
    """An anomalous observation of a series, found at log ``position``."""

    series: str
    subject: str  # the protocol slug or token id
    measure: str  # tvl, volume_24h, fees_24h or price
    observed_at: float
    value: float
    score: float
    direction: Literal["fall", "rise"]
    reason: str
    position: int


def series_of(entry: LogEntry) -> tuple[str, str, str, float, float] | None:
    """``(series, subject, measure, observed_at, value)`` of an entry the detector follows:
    a metric of ``MEASURES`` in total, or a price; None otherwise."""
    data = entry.data
    if entry.kind == "metric":
        metric = data.get("metric")
        if metric not in MEASURES or (data.get("chain") or "total") != "total":
            return None
        key = f"protocol:{entry.key}:{metric}:total"
        return key, entry.key, str(metric), float(data["observed_at"]), float(data["value"])
    if entry.kind == "price":
        key = f"token:{entry.key}"
        return key, entry.key, "price", float(data["observed_at"]), float(data["price"])
    return None


class AnomalyDetector:
    """Every followed series' detector; ``fold`` turns log entries into detections.

    Deterministic: the same entries in the same order give the same detections, so the
    follower rebuilds its state by folding the log again.
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._series: dict[str, SeriesDetector] = {}
        self.observations = 0  # observations scored or folded (a counter)

    def __len__(self) -> int:
        return len(self._series)

    def dump(self) -> dict[str, SeriesDump]:
        """Every series' state, copied (the detector goes on changing in place)."""
        return {name: detector.dump() for name, detector in self._series.items()}

    @classmethod
    def restore(
        cls, settings: DetectorSettings, series: dict[str, SeriesDump], observations: int = 0
    ) -> AnomalyDetector:
        """A detector in the state ``dump`` returned (``ValueError`` when it does not fit
        ``settings``)."""
        detector = cls(settings)
        detector._series = {name: restore_detector(settings, dump) for name, dump in series.items()}
        detector.observations = observations
        return detector

    def score(self, series: str, observed_at: float, value: float) -> Score | None:
        """The score of one observation of ``series`` (advancing its state)."""
        detector = self._series.get(series)
        if detector is None:
            detector = self._series[series] = new_detector(self.settings)
        self.observations += 1
        return detector.observe(observed_at, value)

    def fold(self, entries: list[LogEntry] | tuple[LogEntry, ...]) -> Iterator[Detection]:
        """The detections among ``entries`` (in log order), with their positions."""
        threshold = self.settings.threshold
        method = self.settings.method
        for entry in entries:
            found = series_of(entry)
            if found is None:
                continue
            series, subject, measure, observed_at, value = found
            score = self.score(series, observed_at, value)
            if score is not None and score.score >= threshold and math.isfinite(score.score):
                yield Detection(
                    series=series,
                    subject=subject,
                    measure=measure,
                    observed_at=observed_at,
                    value=value,
                    score=round(score.score, 6),
                    direction=score.direction,
                    reason=score.reason(method),
                    position=entry.position,
                )
