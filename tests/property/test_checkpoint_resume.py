"""A state restored from a checkpoint, then given the rest of the log, is the state folded
from the whole log: for the node's hot state (views included) and for the anomaly detector
(the same detections after the cut). Random streams: listings, metrics on chains and in
total, late and out-of-order observations, equal timestamps, prices."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.application import anomaly_checkpoint, hot_checkpoint
from defi_realtime.application.anomaly import (
    AnomalyDetector,
    DetectorSettings,
    Method,
    series_of,
)
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry

T0 = 1_700_000_000.0
HOUR = 3_600.0

_METRIC = st.tuples(
    st.just("metric"),
    st.sampled_from(["aave", "lido", "curve"]),
    st.sampled_from(["tvl", "volume_24h", "fees_24h", "tvl"]),
    st.sampled_from(["total", "total", "Ethereum", "Arbitrum"]),
    st.integers(min_value=-240, max_value=240),  # hours from T0: late and out of order
    st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
)
_PRICE = st.tuples(
    st.just("price"),
    st.sampled_from(["coingecko:eth", "coingecko:btc"]),
    st.just("price"),
    st.just("total"),
    st.integers(min_value=-240, max_value=240),
    st.floats(min_value=0.01, max_value=1e5, allow_nan=False),
)
_LISTING = st.tuples(
    st.just("protocol_listed"),
    st.sampled_from(["aave", "lido", "curve"]),
    st.just(""),
    st.sampled_from(["Ethereum", "Solana"]),
    st.just(0),
    st.just(0.0),
)
_STREAM = st.lists(st.one_of(_METRIC, _METRIC, _PRICE, _LISTING), min_size=1, max_size=60)


def entries_of(stream: list[tuple[str, str, str, str, int, float]]) -> list[LogEntry]:
    entries = []
    for position, (kind, key, metric, chain, hours, value) in enumerate(stream, start=1):
        data: dict[str, Any]
        if kind == "metric":
            data = {
                "metric": metric,
                "chain": chain,
                "value": value,
                "observed_at": T0 + hours * HOUR,
                "source": "test",
            }
        elif kind == "price":
            data = {
                "price": value,
                "observed_at": T0 + hours * HOUR,
                "confidence": None,
                "source": "test",
            }
        else:
            data = {"name": key.title(), "category": "Dexes", "chains": [chain], "url": ""}
        entries.append(LogEntry(position, kind, key, data, recorded_at=T0))
    return entries


def batch(entries: list[LogEntry], after: int) -> LogBatch:
    return LogBatch(after, entries[-1].position if entries else after, tuple(entries))


@settings(max_examples=60, deadline=None)
@given(stream=_STREAM, cut=st.integers(min_value=1, max_value=60))
def test_a_restored_hot_state_plus_the_tail_is_the_whole_fold(
    stream: list[tuple[str, str, str, str, int, float]], cut: int
) -> None:
    entries = entries_of(stream)
    cut = min(cut, len(entries))
    whole = HotState()
    whole.apply(batch(entries, 0))

    before = HotState()
    before.apply(batch(entries[:cut], 0))
    taken = hot_checkpoint.snapshot(before)
    restored = HotState()
    hot_checkpoint.install(restored, hot_checkpoint.decode(cut, hot_checkpoint.encode(taken)))
    assert restored.protocols == before.protocols
    assert restored.protocol_views == before.protocol_views
    if cut < len(entries):
        restored.apply(batch(entries[cut:], cut))

    assert restored.position == whole.position
    assert restored.protocols == whole.protocols
    assert restored.tokens == whole.tokens
    assert restored.protocol_views == whole.protocol_views
    assert restored.price_views == whole.price_views


# Few series, mostly moving forward in time: series get past their warm-up and are scored.
_SERIES_STREAM = st.lists(
    st.tuples(
        st.sampled_from(["metric", "metric", "price"]),
        st.sampled_from(["aave", "aave", "lido"]),
        st.sampled_from(["tvl", "tvl", "fees_24h"]),
        st.just("total"),
        st.integers(min_value=-2, max_value=24),
        st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=40, deadline=None)
@given(
    stream=_SERIES_STREAM,
    cut=st.integers(min_value=0, max_value=80),
    method=st.sampled_from(["robust_z", "cusum"]),
)
def test_a_restored_detector_scores_what_the_whole_fold_scores_after_the_cut(
    stream: list[tuple[str, str, str, str, int, float]], cut: int, method: Method
) -> None:
    detector = DetectorSettings(method=method, window=5, warmup=3, threshold=3.0)
    # Cumulative hours: a series' points mostly move forward.
    hours = 0
    for index, (kind, key, metric, chain, step, value) in enumerate(stream):
        hours += step
        stream[index] = (
            kind,
            key if kind == "metric" else "coingecko:eth",
            metric,
            chain,
            hours,
            value,
        )
    entries = entries_of(stream)
    cut = min(cut, len(entries))
    whole = AnomalyDetector(detector)
    list(whole.fold(entries[:cut]))

    before = AnomalyDetector(detector)
    list(before.fold(entries[:cut]))
    body = anomaly_checkpoint.snapshot(before, cut).encode()
    restored = anomaly_checkpoint.decode(detector, body)
    assert restored is not None
    for entry in entries[cut:]:
        found = series_of(entry)
        if found is not None:
            series, _, _, observed_at, value = found
            assert restored.score(series, observed_at, value) == whole.score(
                series, observed_at, value
            )
    assert restored.dump() == whole.dump()
    # Other settings: the body is not theirs.
    assert anomaly_checkpoint.decode(DetectorSettings(window=6), body) is None
