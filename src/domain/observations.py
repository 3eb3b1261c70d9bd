"""Value rules shared by metric and price observations."""

from __future__ import annotations

import math
from typing import Final, Literal, get_args

from .errors import InvalidObservation

Metric = Literal["tvl", "volume_24h", "fees_24h"]
METRICS: Final[frozenset[str]] = frozenset(get_args(Metric))
TOTAL: Final = "total"
MAX_NAME_LENGTH: Final = 200


def check_value(value: float, *, what: str = "value") -> float:
    """Return ``value`` as a float if it is finite and non-negative, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidObservation(f"{what} must be a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit integers)
        raise InvalidObservation(f"{what} must be finite, got a too large integer") from None
    if not math.isfinite(number):
        raise InvalidObservation(f"{what} must be finite, got {value!r}")
    if number < 0:
        raise InvalidObservation(f"{what} must be non-negative, got {value!r}")
    return number


def check_timestamp(observed_at: float) -> float:
    """Return ``observed_at`` (unix seconds) if it is a plausible finite time."""
    if isinstance(observed_at, bool) or not isinstance(observed_at, int | float):
        raise InvalidObservation("observed_at must be unix seconds")
    try:
        stamp = float(observed_at)
    except OverflowError:
        raise InvalidObservation("observed_at out of range") from None
    # 2000-01-01 .. 2100-01-01: anything outside is a unit mistake (ms vs s) or garbage.
    if not math.isfinite(stamp) or not 946_684_800 <= stamp < 4_102_444_800:
        raise InvalidObservation(f"observed_at out of range: {observed_at!r}")
    return stamp


def check_metric(metric: str) -> str:
    # isinstance first: an unhashable value (list, dict) would make ``in`` raise TypeError.
    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidObservation(f"unknown metric {metric!r}; expected one of {sorted(METRICS)}")
    return metric


def check_label(label: str, *, what: str) -> str:
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_NAME_LENGTH:
        raise InvalidObservation(f"{what} must be a non-empty string of at most 200 characters")
    return label
