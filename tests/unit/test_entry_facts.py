"""Each live frame's facts are those of its own entry's position (``HotState.facts``)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from defi_realtime.application.hot_state import HotState, ProtocolState
from defi_realtime.application.log import LogBatch, LogEntry

T0 = 1_765_000_000.0
DAY = 86_400.0


def metric(position: int, value: float, at: float, **data: Any) -> LogEntry:
    fields = {"metric": "tvl", "chain": "total", "value": value, "observed_at": at, "source": ""}
    fields.update(data)
    return LogEntry(position, "metric", "aave", fields, at)


def price(position: int, value: float, at: float) -> LogEntry:
    fields = {"price": value, "observed_at": at, "confidence": None, "source": ""}
    return LogEntry(position, "price", "coingecko:ethereum", fields, at)


def apply(state: HotState, *entries: LogEntry) -> None:
    first = entries[0].position
    assert state.apply(LogBatch(after=first - 1, last=entries[-1].position, entries=entries))


def change(state: HotState, entry: LogEntry) -> float | None:
    return state.facts[entry.position].change_24h(entry)


def test_each_metric_has_its_own_24h_change() -> None:
    # TVL 100 -> 200 and volume 10 -> 11, a day apart: the volume's change is 10 %, not 100.
    state = HotState(record_facts=True)
    apply(
        state,
        metric(1, 100.0, T0),
        metric(2, 10.0, T0, metric="volume_24h"),
        metric(3, 1.0, T0, metric="fees_24h"),
    )
    tvl, volume, fees = (
        metric(4, 200.0, T0 + DAY),
        metric(5, 11.0, T0 + DAY, metric="volume_24h"),
        metric(6, 1.5, T0 + DAY, metric="fees_24h"),
    )
    apply(state, tvl, volume, fees)
    assert change(state, tvl) == pytest.approx(100.0)
    assert change(state, volume) == pytest.approx(10.0)
    assert change(state, fees) == pytest.approx(50.0)
    # A chain's value has no 24 h change of its own here.
    chain = metric(7, 5.0, T0 + DAY, chain="Ethereum")
    apply(state, chain)
    assert change(state, chain) is None


def test_a_late_observation_is_not_current() -> None:
    state = HotState(record_facts=True)
    current, late = metric(1, 100.0, T0), metric(2, 50.0, T0 - 60)
    apply(state, current, late)
    assert state.facts[1].current is True
    assert state.facts[2].current is False
    assert change(state, late) is None
    assert state.protocol_views["aave"].tvl == 100.0


def test_facts_are_those_of_the_entrys_position_within_a_batch() -> None:
    state = HotState(record_facts=True)
    apply(state, metric(1, 100.0, T0), price(2, 1_000.0, T0))
    first, second = metric(3, 110.0, T0 + DAY), metric(4, 200.0, T0 + DAY + 60)
    eth = price(5, 1_100.0, T0 + DAY)
    apply(state, first, second, eth)
    # The first entry's frame says 10 %, though the batch ends at 100 %.
    assert change(state, first) == pytest.approx(10.0)
    assert change(state, second) == pytest.approx(100.0)
    assert change(state, eth) == pytest.approx(10.0)
    after_first = state.facts[3].state
    assert isinstance(after_first, ProtocolState)
    assert after_first.tvl is not None
    assert after_first.tvl.value == 110.0


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1e9)), min_size=1, max_size=30))
def test_the_facts_equal_a_fold_stopped_at_each_entry(steps: list[tuple[int, float]]) -> None:
    # Applying a batch at once records, for every entry, the state a fold stopped right
    # after that entry would hold.
    entries = [
        metric(position, value, T0 + hours * 3_600)
        for position, (hours, value) in enumerate(steps, start=1)
    ]
    whole = HotState(record_facts=True)
    apply(whole, *entries)
    for entry in entries:
        prefix = HotState()
        apply(prefix, *entries[: entry.position])
        assert whole.facts[entry.position].state == prefix.protocols["aave"]
