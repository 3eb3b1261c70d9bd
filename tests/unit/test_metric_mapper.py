"""MetricRecordedMapper writes exactly what eventsourcing's stock Mapper writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)
from hypothesis import given
from hypothesis import strategies as st

from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.metric_mapper import MetricRecordedMapper
from defi_realtime.domain.protocol import Protocol

T0 = 1_700_000_000.0


def transcoder() -> JSONTranscoder:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


def recorded(**fields: Any) -> Protocol.MetricRecorded:
    protocol = Protocol.create("aave", "Aave")
    protocol.collect_events()
    protocol.record_metric("tvl", "total", 1.0, T0, "s")
    [event] = protocol.collect_events()
    event.__dict__.update(fields)  # any state, as a replayed or hand-built event could hold
    return event


def both(event: Any, **options: Any) -> tuple[Any, Any]:
    results = []
    for mapper in (Mapper(transcoder(), **options), MetricRecordedMapper(transcoder(), **options)):
        try:
            results.append(mapper.to_stored_event(event))
        except Exception as error:  # the same failure, if it fails
            results.append((type(error), str(error)))
    return results[0], results[1]


_TEXT = st.one_of(st.text(), st.sampled_from(['a"b', "a\\b", "\x00\x1f", "é 🚀", "\u2028"]))
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308, 0.1]),
)
_STAMPS = st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))]))


@given(
    slug=_TEXT,
    metric=_TEXT,
    chain=_TEXT,
    value=_FLOATS,
    observed_at=_FLOATS,
    source=_TEXT,
    timestamp=_STAMPS,
)
def test_the_template_writes_the_stock_bytes(
    slug: str,
    metric: str,
    chain: str,
    value: float,
    observed_at: float,
    source: str,
    timestamp: datetime,
) -> None:
    event = recorded(
        slug=slug,
        metric=metric,
        chain=chain,
        value=value,
        observed_at=observed_at,
        source=source,
        timestamp=timestamp,
    )
    stock, ours = both(event)
    assert ours == stock


@given(
    changes=st.sampled_from(
        [
            {"value": 1},  # an int
            {"value": True},
            {"source": None},
            {"observed_at": "2025-01-01"},
            {"extra": 1},
        ]
    )
)
def test_other_states_go_to_the_stock_mapper(changes: dict[str, Any]) -> None:
    stock, ours = both(recorded(**changes))
    assert ours == stock


def test_reordered_state_goes_to_the_stock_mapper() -> None:
    event = recorded()
    state = dict(event.__dict__)
    event.__dict__.clear()
    event.__dict__.update(reversed(list(state.items())))
    stock, ours = both(event)
    assert ours == stock


def test_other_events_and_mappers_with_a_compressor_use_the_stock_path() -> None:
    listed = Protocol.create("aave", "Aave").collect_events()[0]
    assert both(listed)[0] == both(listed)[1]
    stock, ours = both(recorded(), compressor=ZlibCompressor())
    assert isinstance(ours, StoredEvent)
    assert ours == stock


def test_the_application_maps_metrics_with_it_and_reads_them_back() -> None:
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        assert isinstance(app.mapper, MetricRecordedMapper)
        event = recorded(originator_id=uuid4())
        stored = app.mapper.to_stored_event(event)
        assert vars(app.mapper.to_domain_event(stored)) == vars(event)
    finally:
        app.close()
