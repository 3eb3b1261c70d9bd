"""Series states: the history projection's rollup for cuts (ADR 0021).

One state per (series, observed time): the latest recording of that time, the span it holds
(until the series' next time: ``valid_to``), the first log position observed up to it and,
on a total-TVL series, the 1h/1d/7d changes the live view computes at it. The state of
every series at a time T is then the states whose span holds T, one row each, changes
included: what ``time_travel.views_at`` would compute from the raw points inside a cut at T
(without ``knownAt``: a state holds everything recorded, late corrections included).

``restate`` is the whole maintenance rule, pure: given a series' states from a point
``CHANGE_SPAN`` before the earliest new recording onwards, and the new recordings, it
returns the states that change. The adapter reads and writes the rows.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..domain.observations import TOTAL, VOLUME_METRICS
from .views import CHANGE_WINDOWS, RECENT_WINDOW_SECONDS, percent_change

__all__ = [
    "CHANGE_METRICS",
    "CHANGE_SPAN",
    "OPEN",
    "Recording",
    "SeriesKey",
    "SeriesState",
    "changes_at",
    "has_changes",
    "restate",
]

# How far back a state's changes look: what the hot projections keep, as the cuts do.
CHANGE_SPAN: Final = RECENT_WINDOW_SECONDS
# ``valid_to`` of a series' newest state.
OPEN: Final = math.inf

SeriesKey = tuple[str, str, str]
"""(protocol, metric, chain)."""


@dataclass(frozen=True, slots=True)
class Recording:
    """One observation of a series as the log recorded it."""

    observed_at: float
    value: float
    position: int


class SeriesState(NamedTuple):
    """A tuple (a cut reads thousands of them: cheaper to build than a dataclass)."""

    protocol: str
    metric: str
    chain: str
    observed_at: float
    value: float
    position: int
    """The position of the recording that holds (the latest recording of this time)."""
    first_position: int
    """The smallest position recorded at or before ``observed_at`` (orders chains)."""
    valid_to: float
    """The series' next observed time (``OPEN`` for its newest state)."""
    change_1h: float | None = None
    change_1d: float | None = None
    change_7d: float | None = None

    @property
    def key(self) -> SeriesKey:
        return (self.protocol, self.metric, self.chain)


# The metrics whose total series carry changes: the TVL, and the flows (their own
# ``change_1d``/``change_7d``; the hourly one is kept too, but no view shows it).
CHANGE_METRICS: Final[tuple[str, ...]] = ("tvl", *sorted(VOLUME_METRICS))


def has_changes(metric: str, chain: str) -> bool:
    """Whether a series' states carry changes (``CHANGE_METRICS``' totals)."""
    return chain == TOTAL and metric in CHANGE_METRICS


def changes_at(
    times: Sequence[float], values: Sequence[float], index: int
) -> tuple[float | None, ...]:
    """The changes at ``times[index]`` from the points within ``CHANGE_SPAN`` before it (the
    live view's rule, ``percent_change``: only points near each window's start matter)."""
    at, value = times[index], values[index]
    answer = []
    for window in CHANGE_WINDOWS.values():
        start = bisect_left(times, max(at - CHANGE_SPAN, at - window * (1.5 + 1e-6)))
        answer.append(
            percent_change(
                zip(times[start : index + 1], values[start : index + 1], strict=True),
                value,
                at,
                window,
            )
        )
    return tuple(answer)


def restate(
    key: SeriesKey, states: Sequence[SeriesState], recordings: Iterable[Recording]
) -> list[SeriesState]:
    """The states of series ``key`` that ``recordings`` (new, in log order) create or change.

    ``states`` are the series' stored states, time-ordered: every state from ``CHANGE_SPAN``
    before the earliest recording's time onwards, and the one state before those if there is
    one (its span and first position continue into the new ones). When every recording is
    newer than the series' newest state, that state and, for the changes, the states nearest
    each change window's start (on both sides) are enough.
    """
    original = {state.observed_at: state for state in states}
    # time -> (value, position, smallest position recorded at that time or before)
    held = {s.observed_at: (s.value, s.position, s.first_position) for s in states}
    for recording in recordings:
        found = held.get(recording.observed_at)
        if found is None:
            held[recording.observed_at] = (
                recording.value,
                recording.position,
                recording.position,
            )
        elif recording.position > found[1]:  # a correction of that time
            held[recording.observed_at] = (recording.value, recording.position, found[2])
    times = sorted(held)
    changed = [
        t
        for t in times
        if t not in original or held[t][:2] != (original[t].value, original[t].position)
    ]
    if not changed:
        return []
    values = [held[t][0] for t in times]
    changes: dict[int, tuple[float | None, ...]] = {}
    protocol, metric, chain = key
    if has_changes(metric, chain):
        # A state's changes read the points up to CHANGE_SPAN before it.
        start = bisect_left(times, changed[0])
        stop = bisect_right(times, changed[-1] + CHANGE_SPAN)
        changes = {index: changes_at(times, values, index) for index in range(start, stop)}
    first = math.inf
    answer = []
    # States before the first change's predecessor never change (and ``states`` may hold
    # only some of them: the ones near the change windows).
    unchanged_before = bisect_left(times, changed[0]) - 1
    for index, at in enumerate(times):
        value, position, first_here = held[at]
        first = min(first, first_here)
        if index < unchanged_before:
            continue
        valid_to = times[index + 1] if index + 1 < len(times) else OPEN
        before = original.get(at)
        change_1h, change_1d, change_7d = changes.get(index) or (
            (None, None, None)
            if before is None
            else (before.change_1h, before.change_1d, before.change_7d)
        )
        if (
            before is not None
            and (before.value, before.position, before.first_position, before.valid_to)
            == (value, position, first, valid_to)
            and (before.change_1h, before.change_1d, before.change_7d)
            == (change_1h, change_1d, change_7d)
        ):
            continue
        answer.append(
            SeriesState(
                protocol,
                metric,
                chain,
                at,
                value,
                position,
                int(first),
                valid_to,
                change_1h,
                change_1d,
                change_7d,
            )
        )
    return answer
