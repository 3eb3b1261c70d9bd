"""Bounded aggregates and their snapshots (docs/adr/0045-bounded-aggregates-and-snapshots.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from eventsourcing.domain import Snapshot
from eventsourcing.utils import get_topic

from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from defi_realtime.domain.protocol import Protocol
from defi_realtime.domain.recent import RECENT_PER_SERIES
from defi_realtime.domain.token import Token
from defi_realtime.entrypoints.settings import Settings

T0 = 1_700_000_000.0


class SnapshottingOften(DefiRealtime):
    name = "DefiRealtime"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {Protocol: 5, Token: 5}


def observations(times: list[float], value: float = 1.0) -> list[dict[str, Any]]:
    return [{"protocol": "aave", "name": "Aave", "value": value, "observed_at": t} for t in times]


def test_the_window_keeps_the_newest_times_whatever_their_order() -> None:
    protocol = Protocol.create("aave", "Aave")
    times = [T0 + 60 * i for i in (5, 0, 11, 3, 7, 1, 9, 2, 10, 4, 8, 6)]
    for stamp in times:
        assert protocol.record_metric("tvl", "total", stamp - T0, stamp) is True
    newest = sorted(times)[-RECENT_PER_SERIES:]
    assert protocol.recent[("tvl", "total")] == {t: t - T0 for t in newest}
    assert protocol.horizon[("tvl", "total")] == sorted(times)[-RECENT_PER_SERIES - 1]
    assert protocol.current_value() == max(times) - T0
    assert protocol.beyond_window("tvl", "total", min(times))
    assert not protocol.beyond_window("tvl", "total", min(newest))


def test_an_old_repeat_is_a_duplicate_and_an_old_correction_is_not(tmp_path: Path) -> None:
    """Beyond the window only the store knows: without asking it, the repeat of the oldest
    observation would be recorded again."""
    app = DefiRealtime(env=Settings(data_dir=tmp_path).event_store_env)
    try:
        times = [T0 + 60 * i for i in range(RECENT_PER_SERIES + 3)]
        [first] = app.ingest([build_batch(observations(times))])
        assert first.accepted == len(times)
        protocol = app.get_protocol("aave")
        assert protocol.beyond_window("tvl", "total", times[0])

        [repeat, correction] = app.ingest(
            [build_batch(observations(times[:3])), build_batch(observations(times[:1], 2.0))]
        )
        assert (repeat.accepted, repeat.duplicates) == (0, 3)
        assert (correction.accepted, correction.duplicates) == (1, 0)
        # The correction, in the same group as another repeat of it: a duplicate of what the
        # group itself recorded (not yet in the store).
        [again, twice] = app.ingest(
            [build_batch(observations(times[1:2], 5.0)), build_batch(observations(times[1:2], 5.0))]
        )
        assert ((again.accepted, twice.duplicates)) == (1, 1)
    finally:
        app.close()


def test_snapshots_are_taken_and_loading_reads_only_what_follows(tmp_path: Path) -> None:
    env = Settings(data_dir=tmp_path).event_store_env
    writer = SnapshottingOften(env=env)
    try:
        times = [T0 + 60 * i for i in range(23)]  # Listed + 23 observations: version 24
        for stamp in times:
            writer.ingest([build_batch(observations([stamp]))])
        protocol_id = Protocol.id_for("aave")
        assert writer.snapshots is not None
        taken = list(writer.snapshots.get(protocol_id))
        assert [s.originator_version for s in taken] == [5, 10, 15, 20]
        assert all(isinstance(s, Protocol.Snapshot) for s in taken)
        stored = writer.snapshots.recorder.select_events(protocol_id)
        # Bounded: the window, not all 23 observations.
        assert stored[-1].state.count(b"1700") < 2 * RECENT_PER_SERIES + 6
    finally:
        writer.close()

    reader = SnapshottingOften(env=env)
    try:
        reads: list[dict[str, Any]] = []
        select_events = reader.recorder.select_events

        def counted(originator_id: Any, **kwargs: Any) -> Any:
            reads.append(kwargs)
            return select_events(originator_id, **kwargs)

        reader.recorder.select_events = counted  # type: ignore[method-assign]
        [result] = reader.ingest([build_batch(observations(times[-2:]))])  # cold cache
        assert (result.accepted, result.duplicates) == (0, 2)
        assert reads[0] == {"gt": 20}
        loaded = reader.repository.get(protocol_id)
        assert loaded.version == 24
        assert loaded.current_value() == 1.0
    finally:
        reader.close()


def test_a_version_one_state_upcasts_to_the_window() -> None:
    """A snapshot of the unbounded aggregate (class version 1, every observation in
    ``history``) loads as the bounded one."""
    history = {("tvl", "total", T0 + 60 * i): float(i) for i in range(RECENT_PER_SERIES + 2)}
    protocol = Protocol.create("aave", "Aave")
    state = {k: v for k, v in vars(protocol).items() if k not in ("recent", "horizon")}
    state.pop("_pending_events")
    old = Snapshot(
        originator_id=protocol.id,
        originator_version=11,
        timestamp=datetime.now(UTC),
        topic=get_topic(Protocol),
        state={**state, "current": {("tvl", "total"): (9.0, T0 + 540)}, "history": history},
    )
    loaded = old.mutate(None)
    assert isinstance(loaded, Protocol)
    assert not hasattr(loaded, "history")
    assert loaded.recent[("tvl", "total")] == {
        T0 + 60 * i: float(i) for i in range(2, RECENT_PER_SERIES + 2)
    }
    assert loaded.horizon == {("tvl", "total"): T0 + 60}
    token_state = {"token_id": "coingecko:x", "price": 2.0, "observed_at": T0 + 60}
    old_token = Snapshot(
        originator_id=Token.id_for("coingecko:x"),
        originator_version=3,
        timestamp=datetime.now(UTC),
        topic=get_topic(Token),
        state={**token_state, "confidence": None, "history": {T0: 1.0, T0 + 60: 2.0}},
    )
    token = old_token.mutate(None)
    assert isinstance(token, Token)
    assert (token.recent, token.horizon) == ({T0: 1.0, T0 + 60: 2.0}, None)
