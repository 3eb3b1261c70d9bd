"""Property test: the thinned hot state answers as the whole 8-day history would (ADR 0044).

``HotState`` keeps of each series only what ADR 0006's rule can still select; the reference
(the contract suite's ``ReferenceFold``, written independently of ``hot_state``) keeps every
point of the window. After every batch of random streams (moving forward, late and
out-of-order observations, same-time corrections, zero values), every view, price and live
frame fact must be identical, and each series must hold exactly the points ADR 0044 says.
"""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_realtime.application.hot_state import (
    FLOW_REACH,
    PRICE_REACH,
    TVL_REACH,
    HotState,
    Points,
)
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.views import RECENT_WINDOW_SECONDS, percent_change
from tests.contract.test_hot_projection_contract import ReferenceFold, thinning_streams

DAY = 86_400.0


def window(log: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The whole history today's fold keeps: the last recording per time, within
    ``RECENT_WINDOW_SECONDS`` of the newest."""
    newest = max(at for at, _ in log)
    return sorted(
        (at, value) for at, value in dict(log).items() if at >= newest - RECENT_WINDOW_SECONDS
    )


def needed(log: list[tuple[float, float]], reach: float) -> list[tuple[float, float]]:
    """ADR 0044's set, on a plain list: the window from the last point at or before
    ``newest - reach`` on."""
    kept = window(log)
    newest = max(at for at, _ in log)
    before = [index for index, (at, _) in enumerate(kept) if at <= newest - reach]
    return kept[before[-1] :] if before else kept


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entries=thinning_streams(), cuts=st.sets(st.integers(1, 59), max_size=20))
def test_the_thinned_state_answers_as_the_whole_window(
    entries: list[LogEntry], cuts: set[int]
) -> None:
    state = HotState(record_facts=True)
    logs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    bounds = [0, *sorted(c for c in cuts if c < len(entries)), len(entries)]
    for after, last in itertools.pairwise(bounds):
        batch = entries[after:last]
        assert state.apply(LogBatch(after, last, tuple(batch)))
        for entry in batch:
            data = entry.data
            series = (entry.key, str(data.get("metric", "price")))
            point = (float(data["observed_at"]), float(data.get("value", data.get("price"))))
            logs.setdefault(series, []).append(point)
            # The live frame's 24 h change, from the whole window as it stood then.
            fact = state.facts[entry.position]
            expected = None
            if fact.current:
                expected = percent_change(window(logs[series]), point[1], point[0], DAY)
            assert fact.change_24h(entry) == expected, entry
        reference = ReferenceFold(entries[:last])
        assert state.protocol_views == reference.protocols
        assert state.price_views == reference.prices
        for (key, metric), log in logs.items():
            if metric == "price":
                held: Points = state.tokens[key].recent
                reach = PRICE_REACH
            elif metric == "tvl":
                held, reach = state.protocols[key].recent, TVL_REACH
            else:
                held, reach = state.protocols[key].series[metric], FLOW_REACH
            assert list(held) == needed(log, reach), (key, metric)
