"""``EventStoreLog``'s fast path (plain JSON states) gives exactly the mapper's entries."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.cipher import AESCipher
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import Mapper, Notification
from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.event_store_log import (
    TRANSLATIONS,
    EventStoreLog,
    fast_entry,
    plain_json_states,
    to_entry,
)
from defi_realtime.adapters.in_flight import ClosedError
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.log import LogBatch, LogEntry

T0 = 1_700_000_000.0
METRIC_TOPIC = "defi_realtime.domain.protocol:Protocol.MetricRecorded"


@pytest.fixture
def app() -> Iterator[DefiRealtime]:
    application = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        yield application
    finally:
        application.close()


def exact(batch: LogBatch) -> list[tuple[Any, ...]]:
    """Entries with the types of their values: 1 == 1.0 must not hide a difference."""
    return [
        (
            entry.position,
            entry.kind,
            entry.key,
            entry.recorded_at,
            json.dumps(dict(entry.data)),
            [(name, type(value)) for name, value in entry.data.items()],
        )
        for entry in batch.entries
    ]


def both_ways(app: DefiRealtime) -> tuple[LogBatch, LogBatch]:
    fast = EventStoreLog(app).read(0, 10_000)
    general = EventStoreLog(app, fast=False).read(0, 10_000)
    assert (fast.after, fast.last) == (general.after, general.last)
    assert exact(fast) == exact(general)
    assert fast == general
    return fast, general


def fill(app: DefiRealtime) -> None:
    app.ingest(
        [
            build_batch(
                [
                    {
                        "protocol": "aave-v3",
                        "name": 'Aave "V3" \\ Ünïcødé 🚀',
                        "category": "Lending",
                        "chains": ["Ethereum", "Arbitrum"],
                        "url": "https://aave.com/?a=1&b=2",
                        "value": 10,
                        "observed_at": T0,
                        "source": '"_type_"',
                    },
                    {"protocol": "aave-v3", "value": 1e-300, "observed_at": T0 + 1},
                    {
                        "protocol": "aave-v3",
                        "metric": "fees_24h",
                        "chain": "Ethereum",
                        "value": 123456789.123456789,
                        "observed_at": "2024-01-01T00:00:00Z",
                    },
                ],
                [
                    {"token": "coingecko:ethereum", "price": 3000, "observed_at": T0},
                    {
                        "token": "coingecko:ethereum",
                        "price": 3001.5,
                        "observed_at": T0 + 1,
                        "confidence": 0.5,
                    },
                ],
                [{"protocol": "lido", "name": "Lido", "chains": []}],
            )
        ]
    )
    app.update_protocol("aave-v3", category="Dexes", chains=["Ethereum"])
    app.issue_api_key("someone")
    rule_id = app.create_alert_rule(
        "alice",
        {"protocol": "aave-v3"},
        {"kind": "threshold", "direction": "below", "value": 5},
        [{"kind": "websocket"}],
        cooldown=0,
    )
    rule = app.repository.get(rule_id)
    rule.observe(1.0, T0)
    rule.observe(9.0, T0 + 1)
    app.save(rule)


def test_both_paths_give_identical_entries_for_every_kind(app: DefiRealtime) -> None:
    fill(app)
    fast, _ = both_ways(app)
    assert {entry.kind for entry in fast.entries} >= {
        "protocol_listed",
        "protocol_updated",
        "metric",
        "price",
        "alert_triggered",
        "alert_resolved",
    }


def test_the_fast_path_does_not_use_the_mapper(
    app: DefiRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(app)
    expected = EventStoreLog(app, fast=False).read(0, 10_000)

    def refuse(notification: Notification) -> Any:
        raise AssertionError(f"mapper used for {notification.topic}")

    monkeypatch.setattr(app.mapper, "to_domain_event", refuse)
    assert EventStoreLog(app).read(0, 10_000) == expected


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(max_size=30),
    value=st.floats(min_value=0, max_value=1e30, allow_nan=False) | st.integers(0, 10**18),
    observed_at=st.floats(min_value=1e9, max_value=4e9),
)
def test_property_both_paths_agree(text: str, value: float, observed_at: float) -> None:
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        batch = build_batch(
            [
                {
                    "protocol": "p",
                    "name": "n" + text,
                    "category": text,
                    "url": text,
                    "value": value,
                    "observed_at": observed_at,
                    "source": text,
                }
            ],
            [{"token": "c:t", "price": value, "observed_at": observed_at, "source": text}],
            partial=True,
        )
        app.ingest([batch])
        both_ways(app)
    finally:
        app.close()


def notification(state: dict[str, Any] | bytes, **changes: Any) -> Notification:
    raw = state if isinstance(state, bytes) else json.dumps(state).encode()
    fields: dict[str, Any] = {
        "id": 7,
        "originator_id": uuid4(),
        "originator_version": 2,
        "topic": METRIC_TOPIC,
        "state": raw,
        **changes,
    }
    return Notification(**fields)


def metric_state(**changes: Any) -> dict[str, Any]:
    return {
        "timestamp": {"_type_": "datetime_iso", "_data_": "2024-05-01T12:00:01.5+00:00"},
        "slug": "aave",
        "metric": "tvl",
        "chain": "total",
        "value": 1.5,
        "observed_at": T0,
        "source": "s",
        **changes,
    }


def test_a_plain_state_takes_the_fast_path() -> None:
    entry = fast_entry(notification(metric_state()), TRANSLATIONS["Protocol.MetricRecorded"])
    assert entry == LogEntry(
        7,
        "metric",
        "aave",
        {"metric": "tvl", "chain": "total", "value": 1.5, "observed_at": T0, "source": "s"},
        1714564801.5,
    )


@pytest.mark.parametrize(
    "unusual",
    [
        notification(metric_state(class_version=2)),  # the mapper would upcast
        notification(metric_state(source={"_type_": "uuid_hex", "_data_": uuid4().hex})),
        notification(metric_state(timestamp="2024-05-01T12:00:01+00:00")),
        notification(metric_state(), originator_id=str(uuid4())),  # the mapper converts it
        notification({k: v for k, v in metric_state().items() if k != "source"}),
        notification(json.dumps(metric_state()).encode() + b" x"),
        notification(b"[1, 2]"),
        notification(b"not json"),
    ],
)
def test_unusual_states_are_left_to_the_mapper(unusual: Notification) -> None:
    assert fast_entry(unusual, TRANSLATIONS["Protocol.MetricRecorded"]) is None


def test_the_log_falls_back_per_notification(app: DefiRealtime) -> None:
    # An upcast-looking state goes through the mapper; the result is the mapper's.
    unusual = notification(metric_state(class_version=2))
    log = EventStoreLog(app)
    expected = to_entry(unusual.id, app.mapper.to_domain_event(unusual))
    assert expected is not None
    assert log._entry(unusual) == expected


def test_only_plain_json_mappers_qualify(app: DefiRealtime) -> None:
    assert plain_json_states(app.mapper)
    transcoder = app.mapper.transcoder
    assert not plain_json_states(Mapper(transcoder, compressor=ZlibCompressor()))
    cipher = AESCipher.__new__(AESCipher)
    assert not plain_json_states(Mapper(transcoder, cipher=cipher))


def test_a_compressed_store_reads_through_the_mapper() -> None:
    compressed = DefiRealtime(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        }
    )
    try:
        assert not plain_json_states(compressed.mapper)
        fill(compressed)
        fast, _ = both_ways(compressed)
        assert len({entry.kind for entry in fast.entries}) >= 6
    finally:
        compressed.close()


def test_closing_waits_for_a_read_under_way_and_refuses_later_ones(
    app: DefiRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read still running in a worker thread (its task cancelled at shutdown) must end
    before the store closes: SQLite crashed the process when it did not."""
    event_log = EventStoreLog(app)
    started, finished = threading.Event(), threading.Event()
    select = app.recorder.select_notifications

    def slow_select(*args: Any, **kwargs: Any) -> Any:
        started.set()
        time.sleep(0.3)
        result = select(*args, **kwargs)
        finished.set()
        return result

    monkeypatch.setattr(app.recorder, "select_notifications", slow_select)
    reader = threading.Thread(target=event_log.read, args=(0, 10))
    reader.start()
    assert started.wait(5)
    event_log.close()
    assert finished.is_set(), "close returned while a read was under way"
    reader.join(5)
    with pytest.raises(ClosedError):
        event_log.read(0, 10)
    with pytest.raises(ClosedError):
        event_log.head()
