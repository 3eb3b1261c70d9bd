"""Application tests on eventsourcing's in-memory (POPO) persistence, and ingest validation."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import Notification
from hypothesis import event, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.event_store_log import EventStoreLog, to_entry
from defi_realtime.application.app import (
    AlertRuleNotFound,
    ApiKeyNotFound,
    DefiRealtime,
    ProtocolNotFound,
    SubscriptionNotFound,
)
from defi_realtime.application.ingest import (
    MAX_ITEMS_PER_BATCH,
    DuplicateKeyError,
    IngestBatch,
    IngestResult,
    InvalidItem,
    Listing,
    RecordMetric,
    RecordPrice,
    Rejection,
    build_batch,
    no_duplicate_keys,
    parse_listing,
    parse_observation,
    parse_price,
    parse_timestamp,
    ranges,
)
from defi_realtime.application.log import ENTRY_KINDS, LogBatch
from defi_realtime.domain.account import Account
from defi_realtime.domain.alert_rule import InvalidRule
from defi_realtime.domain.api_key import InvalidTier, hash_key
from defi_realtime.domain.errors import InvalidTransition
from defi_realtime.domain.protocol import Protocol
from defi_realtime.domain.subscription import (
    InvalidSubscription,
    SubscriptionNameTaken,
    SubscriptionQuotaExceeded,
)
from defi_realtime.domain.token import Token

T0 = 1_700_000_000.0


@pytest.fixture
def app() -> Iterator[DefiRealtime]:
    application = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        yield application
    finally:
        application.close()


def obs(
    protocol: str = "aave-v3",
    value: Any = 1.0,
    observed_at: Any = T0,
    **extra: Any,
) -> dict[str, Any]:
    return {"protocol": protocol, "value": value, "observed_at": observed_at, **extra}


def named(
    protocol: str = "aave-v3", value: Any = 1.0, observed_at: Any = T0, **extra: Any
) -> dict[str, Any]:
    extra.setdefault("name", protocol.upper())
    return obs(protocol, value, observed_at, **extra)


def head(app: DefiRealtime) -> int:
    return app.recorder.max_notification_id() or 0


def notifications(app: DefiRealtime) -> list[Notification]:
    return list(app.recorder.select_notifications(start=None, limit=10_000))


def topics(app: DefiRealtime, after: int = 0) -> list[str]:
    return [n.topic.rsplit(":", 1)[1] for n in notifications(app) if n.id > after]


# --- ingest: counting -------------------------------------------------------------------


def test_ingest_lists_a_new_protocol_and_records_its_observations(app: DefiRealtime) -> None:
    batch = build_batch(
        [
            named("aave-v3", 10.0, T0, category="Lending", chains=["ethereum"], url="https://a"),
            obs("aave-v3", 4.0, T0, chain="arbitrum"),
            obs("aave-v3", 2.0, T0, metric="volume_24h", source="llama"),
        ]
    )

    [result] = app.ingest([batch])

    assert (result.accepted, result.duplicates, result.rejected) == (3, 0, [])
    assert result.committed is True
    assert result.position == head(app) == 4
    assert topics(app) == [
        "Protocol.Listed",
        "Protocol.MetricRecorded",
        "Protocol.MetricRecorded",
        "Protocol.MetricRecorded",
    ]
    protocol = app.get_protocol("aave-v3")
    assert (protocol.name, protocol.category, protocol.url) == ("AAVE-V3", "Lending", "https://a")
    assert protocol.chains == ["Ethereum", "Arbitrum"]
    assert protocol.current == {
        ("tvl", "total"): (10.0, T0),
        ("tvl", "Arbitrum"): (4.0, T0),
        ("volume_24h", "total"): (2.0, T0),
    }
    assert result.to_json() == {
        "accepted": 3,
        "duplicates": 0,
        "rejected": 0,
        "errors": [],
        "committed": True,
        "position": 4,
    }


def test_ingest_counts_accepted_duplicates_and_rejected_with_reasons(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 10.0, T0)])])
    before = head(app)

    batch = build_batch(
        [
            obs("aave-v3", 10.0, T0),  # 0: duplicate of the stored observation
            obs("aave-v3", 11.0, T0 + 60),  # 1: accepted
            obs("aave-v3", math.nan, T0 + 60),  # 2: NaN
            obs("aave-v3", 11.0, T0 + 60, colour="red"),  # 3: unknown field
            obs("ghost", 1.0, T0),  # 4: unknown protocol, no name
            obs("aave-v3", 11.0, T0 + 60),  # 5: duplicate within the batch
            obs("aave-v3", -3, T0 + 120),  # 6: negative
        ],
        [
            {"token": "coingecko:ethereum", "price": 3000, "observed_at": T0},  # 0: accepted
            {"token": "coingecko:ethereum", "price": 3000, "observed_at": T0 * 1000},  # 1: ms
        ],
        partial=True,
    )

    [result] = app.ingest([batch])

    assert (result.accepted, result.duplicates) == (2, 2)
    assert [(r.kind, r.index) for r in result.rejected] == [
        ("observation", 2),
        ("observation", 3),
        ("observation", 6),
        ("price", 1),
        ("observation", 4),
    ]
    reasons = {(r.kind, r.index): r.reason for r in result.rejected}
    fields = {(r.kind, r.index): r.field for r in result.rejected}
    assert fields == {
        ("observation", 2): "value",
        ("observation", 3): "colour",
        ("observation", 6): "value",
        ("price", 1): "observed_at",
        ("observation", 4): "protocol",
    }
    assert reasons[("observation", 2)] == "value must be finite, got nan"
    assert reasons[("observation", 3)] == "unknown field(s): 'colour'"
    assert reasons[("observation", 6)] == "value must be non-negative, got -3"
    assert reasons[("price", 1)] == f"observed_at out of range: {T0 * 1000!r}"
    assert reasons[("observation", 4)].startswith("unknown protocol 'ghost': include 'name'")
    assert result.committed is True
    # Token registered + its price + one metric.
    assert head(app) == before + 3 == result.position
    assert topics(app, before) == [
        "Protocol.MetricRecorded",
        "Token.Registered",
        "Token.PriceRecorded",
    ]
    assert result.to_json()["rejected"] == 5
    assert result.to_json()["errors"][0] == {
        "kind": "observation",
        "index": 2,
        "field": "value",
        "reason": "value must be finite, got nan",
    }


@pytest.mark.parametrize(
    "bad",
    [
        obs("aave-v3", math.inf, T0 + 1),
        obs("aave-v3", "12", T0 + 1),
        obs("aave-v3", 12, "yesterday"),
        obs("ghost", 12, T0 + 1),
        {"protocol": "aave-v3", "value": 1},
        "not an object",
    ],
)
def test_non_partial_batch_with_one_bad_item_records_nothing(app: DefiRealtime, bad: Any) -> None:
    app.ingest([build_batch([named("aave-v3", 10.0, T0)])])
    stored = notifications(app)

    batch = build_batch(
        [named("new-one", 5.0, T0), obs("aave-v3", 12.0, T0 + 60), bad],
        [{"token": "coingecko:bitcoin", "price": 1.0, "observed_at": T0}],
    )
    [result] = app.ingest([batch])

    assert result.committed is False
    assert (result.accepted, result.duplicates, result.position) == (0, 0, 0)
    assert [(r.kind, r.index) for r in result.rejected] == [("observation", 2)]
    assert notifications(app) == stored
    with pytest.raises(ProtocolNotFound):
        app.get_protocol("new-one")
    assert app.get_protocol("aave-v3").current_value() == 10.0
    # The refused batch left nothing behind in the writer's cache either.
    [again] = app.ingest([build_batch([obs("aave-v3", 12.0, T0 + 60)])])
    assert (again.accepted, again.duplicates) == (1, 0)
    assert app.get_protocol("aave-v3").current_value() == 12.0


def test_partial_batch_records_only_valid_items(app: DefiRealtime) -> None:
    batch = build_batch(
        [named("uni", 1.0, T0), obs("uni", -1.0, T0 + 1), obs("uni", 2.0, T0 + 2)],
        [{"token": "coingecko:ethereum", "price": 1.0, "observed_at": T0, "confidence": 2}],
        partial=True,
    )
    [result] = app.ingest([batch])

    assert (result.accepted, result.duplicates) == (2, 0)
    assert [(r.kind, r.index, r.reason) for r in result.rejected] == [
        ("observation", 1, "value must be non-negative, got -1.0"),
        ("price", 0, "confidence must be between 0 and 1"),
    ]
    assert topics(app) == ["Protocol.Listed", "Protocol.MetricRecorded", "Protocol.MetricRecorded"]
    assert app.get_protocol("uni").recent == {("tvl", "total"): {T0: 1.0, T0 + 2: 2.0}}
    with pytest.raises(AggregateNotFoundError):
        app.repository.get(Token.id_for("coingecko:ethereum"))


def test_unknown_protocol_without_name_is_rejected(app: DefiRealtime) -> None:
    [result] = app.ingest([build_batch([obs("ghost", 1.0, T0)], partial=True)])
    assert result.committed is True
    assert (result.accepted, result.duplicates, result.position) == (0, 0, 0)
    assert result.rejected == [
        Rejection(
            "observation",
            0,
            "unknown protocol 'ghost': include 'name' (and category, chains, url) to list it",
            "protocol",
        )
    ]
    assert head(app) == 0


def test_a_name_anywhere_in_the_batch_lists_the_protocol(app: DefiRealtime) -> None:
    # The first observation has no name; a later one of the same batch names the protocol.
    batch = build_batch([obs("curve", 1.0, T0), named("curve", 2.0, T0 + 60, category="Dexes")])
    [result] = app.ingest([batch])
    assert (result.accepted, result.duplicates, result.rejected) == (2, 0, [])
    assert topics(app) == ["Protocol.Listed", "Protocol.MetricRecorded", "Protocol.MetricRecorded"]
    protocol = app.get_protocol("curve")
    assert (protocol.name, protocol.category) == ("CURVE", "Dexes")
    assert protocol.current_value() == 2.0


def test_listing_items_list_and_update_protocols(app: DefiRealtime) -> None:
    batch = build_batch(
        listings=[{"protocol": "lido", "name": "Lido", "category": "Liquid Staking"}]
    )
    [result] = app.ingest([batch])
    assert (result.accepted, result.rejected) == (1, [])
    assert topics(app) == ["Protocol.Listed"]

    [result] = app.ingest(
        [build_batch(listings=[{"protocol": "lido", "name": "Lido", "chains": ["ethereum"]}])]
    )
    assert topics(app, 1) == ["Protocol.DetailsUpdated"]
    protocol = app.get_protocol("lido")
    assert (protocol.name, protocol.category, protocol.chains) == (
        "Lido",
        "Liquid Staking",
        ["Ethereum"],
    )


# Three snapshots of two protocols, newest first as in the shared snapshot file: "aave"
# changed category and chains over time; "cex" is an untracked listing (no TVL).
SNAPSHOTS = [
    (T0 + 2 * 86_400, "Lending", ["Ethereum", "Base"], "Exchange"),
    (T0 + 86_400, "Lending", ["Ethereum"], "CEX"),
    (T0, "Dexes", ["Ethereum"], "CEX"),
]


def snapshot_batches() -> list[IngestBatch]:
    batches = []
    for at, category, chains, cex_category in SNAPSHOTS:
        aave = named("aave", 1.0 + at - T0, at, category=category, chains=chains)
        cex = {"protocol": "cex", "name": "CEX", "category": cex_category, "observed_at": at}
        batches.append(build_batch([aave], listings=[cex]))
    return batches


def test_older_details_do_not_replace_newer_ones_and_a_reimport_records_nothing(
    app: DefiRealtime,
) -> None:
    first = app.ingest(snapshot_batches())
    recorded = topics(app)
    # Listed twice, three observations: the older snapshots' details change nothing.
    assert sorted(recorded) == ["Protocol.Listed"] * 2 + ["Protocol.MetricRecorded"] * 3
    aave, cex = app.get_protocol("aave"), app.get_protocol("cex")
    assert (aave.category, aave.chains, cex.category) == (
        "Lending",
        ["Ethereum", "Base"],
        "Exchange",
    )

    before = head(app)
    again = app.ingest(snapshot_batches())
    assert head(app) == before  # it used to flip the details back and forth: 4 events
    assert [(r.accepted, r.duplicates) for r in again] == [(0, 2)] * 3
    assert [(r.accepted, r.duplicates) for r in first] == [(2, 0), (1, 1), (1, 1)]


def test_listing_counts_do_not_depend_on_how_batches_are_grouped() -> None:
    counts = []
    for grouping in ([3], [1, 1, 1], [2, 1]):
        app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        try:
            batches, results = snapshot_batches(), []
            for size in grouping:
                results += app.ingest(batches[:size])
                batches = batches[size:]
            counts.append([(r.accepted, r.duplicates) for r in results])
        finally:
            app.close()
    # A listing counts as accepted when it changed something, whatever else is pending.
    assert counts[0] == counts[1] == counts[2] == [(2, 0), (1, 1), (1, 1)]


def test_details_update_through_observations(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0, category="Lending")])])
    before = head(app)

    # Same details again: no event; new category: one DetailsUpdated before the metric.
    [same] = app.ingest([build_batch([named("aave-v3", 2.0, T0 + 1, category="Lending")])])
    [changed] = app.ingest([build_batch([named("aave-v3", 3.0, T0 + 2, category="Dexes")])])

    assert (same.accepted, changed.accepted) == (1, 1)
    assert topics(app, before) == [
        "Protocol.MetricRecorded",
        "Protocol.DetailsUpdated",
        "Protocol.MetricRecorded",
    ]
    assert app.get_protocol("aave-v3").category == "Dexes"
    assert app.update_protocol("aave-v3", url="https://aave.com") is True
    assert app.update_protocol("aave-v3", url="https://aave.com") is False
    assert app.get_protocol("aave-v3").url == "https://aave.com"
    with pytest.raises(ProtocolNotFound, match="'nope'"):
        app.update_protocol("nope", url="x")
    with pytest.raises(ProtocolNotFound):
        app.get_protocol("nope")


def test_late_and_repeated_observations_through_ingest(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 10.0, T0 + 60)])])
    [late] = app.ingest([build_batch([obs("aave-v3", 8.0, T0)])])
    [repeat] = app.ingest([build_batch([obs("aave-v3", 8.0, T0), obs("aave-v3", 10.0, T0 + 60)])])
    [correction] = app.ingest([build_batch([obs("aave-v3", 10.5, T0 + 60)])])

    assert (late.accepted, late.duplicates) == (1, 0)
    assert (repeat.accepted, repeat.duplicates, repeat.position) == (0, 2, late.position)
    assert (correction.accepted, correction.duplicates) == (1, 0)
    protocol = app.get_protocol("aave-v3")
    assert protocol.current_value() == 10.5
    assert protocol.recent == {("tvl", "total"): {T0: 8.0, T0 + 60: 10.5}}


def test_prices_register_tokens_once(app: DefiRealtime) -> None:
    prices = [
        {"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0, "confidence": 0.9},
        {"token": "coingecko:ethereum", "price": 3100.0, "observed_at": T0 + 60},
        {"token": "coingecko:ethereum", "price": 3000.0, "observed_at": T0, "confidence": 0.9},
    ]
    [result] = app.ingest([build_batch(prices=prices)])
    assert (result.accepted, result.duplicates) == (2, 1)
    assert topics(app) == ["Token.Registered", "Token.PriceRecorded", "Token.PriceRecorded"]
    token = app.repository.get(Token.id_for("coingecko:ethereum"))
    assert (token.price, token.observed_at, token.confidence) == (3100.0, T0 + 60, None)


def test_a_group_of_batches_is_one_commit(
    app: DefiRealtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])
    commits: list[int] = []
    insert_events = app.recorder.insert_events

    def counting(*args: Any, **kwargs: Any) -> Any:
        commits.append(len(args[0]))
        return insert_events(*args, **kwargs)

    monkeypatch.setattr(app.recorder, "insert_events", counting)

    batches = [
        build_batch([obs("aave-v3", 2.0, T0 + 1)]),
        build_batch([obs("aave-v3", math.nan, T0 + 2)]),  # refused: not partial
        build_batch([named("uni", 3.0, T0)]),
        build_batch([obs("aave-v3", 2.0, T0 + 1), obs("uni", 4.0, T0 + 1)]),
        build_batch(prices=[{"token": "coingecko:bitcoin", "price": 1, "observed_at": T0}]),
    ]
    results = app.ingest(batches)

    assert commits == [6]
    assert head(app) == 2 + 6
    assert [(r.accepted, r.duplicates, r.committed) for r in results] == [
        (1, 0, True),
        (0, 0, False),
        (1, 0, True),
        (1, 1, True),
        (1, 0, True),
    ]
    # Every committed batch reports the group's position: all of it is readable there.
    assert [r.position for r in results] == [8, 0, 8, 8, 8]
    # Positions 3..8, in order per aggregate.
    recorded: dict[Any, list[tuple[int, str]]] = {}
    for notification in notifications(app)[2:]:
        recorded.setdefault(notification.originator_id, []).append(
            (notification.originator_version, notification.topic.rsplit(":", 1)[1])
        )
    assert recorded == {
        Protocol.id_for("aave-v3"): [(3, "Protocol.MetricRecorded")],
        Protocol.id_for("uni"): [
            (1, "Protocol.Listed"),
            (2, "Protocol.MetricRecorded"),
            (3, "Protocol.MetricRecorded"),
        ],
        Token.id_for("coingecko:bitcoin"): [(1, "Token.Registered"), (2, "Token.PriceRecorded")],
    }
    assert [n.id for n in notifications(app)] == list(range(1, 9))


def test_events_reach_the_log_in_the_order_items_first_use_their_protocols(
    app: DefiRealtime,
) -> None:
    slugs = [f"p{i:02d}" for i in range(30)]
    app.ingest([build_batch([named(slug, 1.0, T0) for slug in slugs])])
    order = slugs[7:] + slugs[:7]
    order.reverse()
    before = head(app)
    # Known (cached) protocols, a new one in the middle, over a group of two batches.
    first = [obs(slug, 2.0, T0 + 60) for slug in order[:20]] + [named("new", 1.0, T0)]
    second = [obs(slug, 2.0, T0 + 60) for slug in order[20:]]
    app.ingest([build_batch(first), build_batch(second)])
    logged = [n.originator_id for n in notifications(app) if n.id > before]
    expected = [Protocol.id_for(slug) for slug in order[:20]]
    expected += [Protocol.id_for("new"), Protocol.id_for("new")]  # Listed, MetricRecorded
    expected += [Protocol.id_for(slug) for slug in order[20:]]
    assert logged == expected


def test_the_ingest_save_stores_and_caches_like_save() -> None:
    """Ingest's _save_group skips the per-event Recording objects and the _notify/notify
    hooks; the same events are stored in the same order, the same aggregates cached."""
    apps = [DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}) for _ in range(2)]
    try:
        stored = []
        for app, lean in zip(apps, (False, True), strict=True):
            protocols = [Protocol.create(f"p{i}", name=f"P{i}") for i in range(3)]
            for i, protocol in enumerate(protocols):
                protocol.record_metric("tvl", "total", float(i), T0, "test")
            if lean:
                assert app._save_group(protocols) == [1, 2, 3, 4, 5, 6]
                assert app._save_group([]) == []
            else:
                assert max(r.notification.id for r in app.save(*protocols)) == 6
            assert app.repository.cache is not None
            assert all(app.repository.cache.get(p.id) is p for p in protocols)
            assert not any(p.pending_events for p in protocols)
            stored.append(
                [(n.id, n.originator_id, n.originator_version, n.topic) for n in notifications(app)]
            )
        assert stored[0] == stored[1]
    finally:
        for app in apps:
            app.close()
    # Nothing listens on the hooks the ingest save does not call.
    assert DefiRealtime._notify is Application._notify
    assert DefiRealtime.notify is Application.notify


def test_save_aggregates_records_like_save() -> None:
    """The ingest's save without ``isinstance`` checks stores, caches and numbers events
    exactly as ``Application.save`` does."""
    apps = [DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}) for _ in range(2)]
    try:
        recorded = []
        savers = (lambda a, xs: a.save(*xs), DefiRealtime.save_aggregates)
        for app, save in zip(apps, savers, strict=True):
            protocols = [Protocol.create(f"p{i}", name=f"P{i}") for i in range(3)]
            for i, protocol in enumerate(protocols):
                protocol.record_metric("tvl", "total", float(i), T0, "test")
            recordings = save(app, protocols)
            protocols[0].record_metric("tvl", "total", 9.0, T0 + 1, "test")
            recordings += save(app, protocols[:1])
            assert app.repository.cache is not None
            assert app.repository.cache.get(protocols[0].id) is protocols[0]
            assert all(not p.pending_events for p in protocols)
            recorded.append(
                (
                    [(r.notification.id, r.notification.originator_version) for r in recordings],
                    [(n.id, n.topic, n.originator_version) for n in notifications(app)],
                    app.repository.get(protocols[0].id).version,
                )
            )
        assert recorded[0] == recorded[1]
        assert len(recorded[0][1]) == 7  # 3 listed + 3 metrics + 1 metric
    finally:
        for app in apps:
            app.close()


def test_empty_group_and_duplicate_only_group_write_nothing(app: DefiRealtime) -> None:
    assert app.ingest([]) == []
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])
    [result] = app.ingest([build_batch([obs("aave-v3", 1.0, T0)])])
    # Nothing written, but everything the batch carries is readable at the head (a client
    # resumes its stream from there); a duplicate-only answer used to say 0.
    assert result == IngestResult(accepted=0, duplicates=1, rejected=[], committed=True, position=2)
    assert head(app) == 2


# --- the event log ----------------------------------------------------------------------


def test_event_store_log_reads_entries_of_the_right_kinds(app: DefiRealtime) -> None:
    log = EventStoreLog(app)
    assert log.head() == 0
    assert log.read(0, 10) == LogBatch(after=0, last=0)

    app.ingest(
        [
            build_batch(
                [named("aave-v3", 10.0, T0, category="Lending", source="s")],
                [
                    {
                        "token": "coingecko:ethereum",
                        "price": 3000,
                        "observed_at": T0,
                        "confidence": 1,
                    }
                ],
            )
        ]
    )
    app.open_account("someone")  # not a downstream fact: its position is covered, no entry
    app.ingest([build_batch([named("aave-v3", 11.0, T0 + 60, category="Dexes")])])

    assert log.head() == 7
    batch = log.read(0, 100)
    assert (batch.after, batch.last) == (0, 7)
    assert [(e.position, e.kind, e.key) for e in batch.entries] == [
        (1, "protocol_listed", "aave-v3"),
        (2, "metric", "aave-v3"),
        # 3: Token.Registered has no entry
        (4, "price", "coingecko:ethereum"),
        # 5: Account.Opened has no entry
        (6, "protocol_updated", "aave-v3"),
        (7, "metric", "aave-v3"),
    ]
    assert {e.kind for e in batch.entries} <= ENTRY_KINDS
    entries = {e.position: e for e in batch.entries}
    assert dict(entries[1].data) == {
        "name": "AAVE-V3",
        "category": "Lending",
        "chains": [],
        "url": "",
        "oracles": [],
        "observed_at": T0,  # when the details were true (the observation's time)
    }
    assert dict(entries[2].data) == {
        "metric": "tvl",
        "chain": "total",
        "value": 10.0,
        "observed_at": T0,
        "source": "s",
    }
    assert dict(entries[4].data) == {
        "price": 3000.0,
        "observed_at": T0,
        "confidence": 1.0,
        "source": "",
    }
    assert entries[6].data["category"] == "Dexes"
    assert all(e.recorded_at > 0 for e in batch.entries)


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 100])
def test_event_store_log_pages_cover_every_position(app: DefiRealtime, limit: int) -> None:
    app.ingest([build_batch([named("a", 1.0, T0), named("b", 2.0, T0)])])
    app.open_account("k")
    app.ingest([build_batch([obs("a", 3.0, T0 + 1)])])
    log = EventStoreLog(app)
    whole = log.read(0, 1_000)

    covered: list[int] = []
    entries = []
    position = 0
    while True:
        page = log.read(position, limit)
        assert page.after == position
        if page.last == position:
            break
        assert page.last - page.after <= limit
        covered.extend(range(page.after + 1, page.last + 1))
        entries.extend(page.entries)
        assert all(page.after < e.position <= page.last for e in page.entries)
        position = page.last

    assert covered == list(range(1, log.head() + 1)) == list(range(1, 7))
    assert tuple(entries) == whole.entries
    assert [e.kind for e in entries] == [
        "protocol_listed",
        "metric",
        "protocol_listed",
        "metric",
        "metric",
    ]


def test_to_entry_ignores_events_nobody_downstream_needs() -> None:
    [opened] = Account.open("x").collect_events()
    assert to_entry(1, opened) is None
    protocol = Protocol.create("aave", "Aave")
    [listed] = protocol.collect_events()
    entry = to_entry(9, listed)
    assert entry is not None
    assert (entry.position, entry.kind, entry.key) == (9, "protocol_listed", "aave")


def test_alert_events_reach_the_log(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])
    rule_id = app.create_alert_rule(
        "alice",
        {"protocol": "aave-v3"},
        {"kind": "threshold", "direction": "below", "value": 5},
        [{"kind": "websocket"}],
        cooldown=0,
    )
    created = head(app)
    rule = app.repository.get(rule_id)
    rule.observe(1.0, T0)
    rule.observe(9.0, T0 + 1)
    app.save(rule)
    batch = EventStoreLog(app).read(created, 10)
    assert [(e.kind, e.key) for e in batch.entries] == [
        ("alert_triggered", str(rule_id)),
        ("alert_resolved", str(rule_id)),
    ]
    assert dict(batch.entries[0].data) == {
        "owner": "alice",
        "measure": 1.0,
        "observed_at": T0,
        "idempotency_key": f"{rule_id}:1",
        "channel_kinds": ["websocket"],
    }


# --- api keys ---------------------------------------------------------------------------


def test_issue_and_authenticate_api_key(app: DefiRealtime) -> None:
    secret = app.issue_api_key("dashboard", tier="pro")

    assert secret.startswith("drt_")
    assert len(secret) > 40
    key = app.authenticate(secret)
    assert key is not None
    assert (key.name, key.owner, key.tier, key.revoked) == (
        "dashboard",
        str(key.account_id),
        "pro",
        False,
    )
    assert key.key_hash == hash_key(secret)
    assert key.limits.requests_per_minute == 6_000
    assert app.authenticate(secret + "x") is None
    assert app.authenticate("") is None
    # Only the hash was stored.
    stored = b"".join(n.state for n in notifications(app))
    assert secret.encode() not in stored
    assert hash_key(secret).encode() in stored


def test_each_issued_key_is_new_and_of_a_new_account(app: DefiRealtime) -> None:
    first = app.issue_api_key("a")
    second = app.issue_api_key("a")
    assert first != second
    one, two = app.authenticate(first), app.authenticate(second)
    assert one is not None
    assert two is not None
    # The same name is not the same account: nothing of one is the other's.
    assert one.account_id != two.account_id
    assert one.owner != two.owner
    # Each: Account.Opened, ApiKey.Issued, and the account's KeyListing (opened, key added).
    assert head(app) == 8


def test_unknown_tier_is_refused(app: DefiRealtime) -> None:
    with pytest.raises(InvalidTier):
        app.issue_api_key("a", tier="platinum")
    assert head(app) == 0


def test_revoke_api_key(app: DefiRealtime) -> None:
    secret = app.issue_api_key("bot")
    other = app.issue_api_key("bot2")

    app.revoke_api_key(secret)

    assert app.authenticate(secret) is None
    assert app.authenticate(other) is not None
    with pytest.raises(InvalidTransition, match="already revoked"):
        app.revoke_api_key(secret)
    with pytest.raises(ApiKeyNotFound):
        app.revoke_api_key("drt_unknown")
    # By hash, as an operator would.
    app.revoke_api_key(hash_key(other))
    assert app.authenticate(other) is None
    assert [topic for topic in topics(app) if not topic.startswith("KeyListing.")] == [
        "Account.Opened",
        "ApiKey.Issued",
        "Account.Opened",
        "ApiKey.Issued",
        "ApiKey.Revoked",
        "ApiKey.Revoked",
    ]


# --- alert rules ------------------------------------------------------------------------

TARGET = {"protocol": "aave-v3"}
CONDITION = {"kind": "threshold", "direction": "below", "value": 1e9}
CHANNELS = [{"kind": "webhook", "url": "https://example.com/hook"}]


def test_alert_rules_are_owned(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])  # a rule's protocol is listed
    rule_id = app.create_alert_rule("alice", TARGET, CONDITION, CHANNELS, 60, "drain")

    rule = app.get_alert_rule(rule_id, "alice")
    assert (rule.owner, rule.name, rule.state, rule.cooldown) == ("alice", "drain", "active", 60)
    assert rule.target.model_dump() == {"protocol": "aave-v3", "metric": "tvl", "chain": "total"}

    for command in (
        lambda: app.get_alert_rule(rule_id, "mallory"),
        lambda: app.pause_alert_rule(rule_id, "mallory"),
        lambda: app.resume_alert_rule(rule_id, "mallory"),
        lambda: app.delete_alert_rule(rule_id, "mallory"),
        lambda: app.update_alert_rule(rule_id, "mallory", cooldown=1),
    ):
        with pytest.raises(AlertRuleNotFound) as caught:
            command()
        assert caught.value.rule_id == str(rule_id)
    with pytest.raises(AlertRuleNotFound):
        app.get_alert_rule(uuid4(), "alice")
    assert app.get_alert_rule(rule_id, "alice").version == 1


def test_alert_rule_lifecycle(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])  # a rule's protocol is listed
    listed = head(app)
    rule_id = app.create_alert_rule("alice", TARGET, CONDITION, CHANNELS)

    app.pause_alert_rule(rule_id, "alice")
    assert app.get_alert_rule(rule_id, "alice").state == "paused"
    with pytest.raises(InvalidTransition):
        app.pause_alert_rule(rule_id, "alice")
    app.resume_alert_rule(rule_id, "alice")
    assert app.get_alert_rule(rule_id, "alice").state == "active"
    app.update_alert_rule(rule_id, "alice", cooldown=5, name="renamed")
    rule = app.get_alert_rule(rule_id, "alice")
    assert (rule.cooldown, rule.name) == (5, "renamed")
    with pytest.raises(InvalidRule):
        app.update_alert_rule(rule_id, "alice", channels=[])
    app.delete_alert_rule(rule_id, "alice")
    # A deleted rule is gone, even for its owner.
    with pytest.raises(AlertRuleNotFound):
        app.get_alert_rule(rule_id, "alice")
    with pytest.raises(AlertRuleNotFound):
        app.delete_alert_rule(rule_id, "alice")
    assert topics(app, after=listed) == [
        # The owner's book admits the rule in the same transaction (the quota).
        "RuleBook.Opened",
        "RuleBook.Admitted",
        "AlertRule.Created",
        "AlertRule.Paused",
        "AlertRule.Resumed",
        "AlertRule.Updated",
        "AlertRule.Deleted",
        "RuleBook.Released",
    ]


def test_invalid_alert_rule_records_nothing(app: DefiRealtime) -> None:
    with pytest.raises(InvalidRule):
        app.create_alert_rule("alice", TARGET, {"kind": "threshold"}, CHANNELS)
    assert head(app) == 0


def test_a_protocol_id_is_not_an_alert_rule(app: DefiRealtime) -> None:
    app.ingest([build_batch([named("aave-v3", 1.0, T0)])])
    with pytest.raises(AlertRuleNotFound):
        app.get_alert_rule(Protocol.id_for("aave-v3"), "alice")


# --- subscriptions ----------------------------------------------------------------------


def test_subscriptions(app: DefiRealtime) -> None:
    subscription_id = app.open_subscription("alice", "protocols", {"protocolIds": ["aave-v3"]})

    found = app.get_subscription(subscription_id, "alice")
    assert (found.channel, found.params, found.position, found.closed) == (
        "protocols",
        {"protocolIds": ["aave-v3"]},
        0,
        False,
    )
    with pytest.raises(SubscriptionNotFound):
        app.get_subscription(subscription_id, "mallory")
    with pytest.raises(SubscriptionNotFound):
        app.advance_subscription(subscription_id, "mallory", 5)
    with pytest.raises(SubscriptionNotFound):
        app.close_subscription(subscription_id, "mallory")
    with pytest.raises(SubscriptionNotFound):
        app.get_subscription(uuid4(), "alice")
    assert app.list_subscriptions("mallory") == []

    app.advance_subscription(subscription_id, "alice", 7)
    app.advance_subscription(subscription_id, "alice", 3)  # never goes back: no event
    assert app.get_subscription(subscription_id, "alice").position == 7
    assert [s.id for s in app.list_subscriptions("alice")] == [subscription_id]
    app.close_subscription(subscription_id, "alice")
    # Closed: gone for its owner too.
    with pytest.raises(SubscriptionNotFound):
        app.get_subscription(subscription_id, "alice")
    assert app.list_subscriptions("alice") == []
    with pytest.raises(InvalidTransition):
        app.advance_subscription(subscription_id, "alice", 9)
    with pytest.raises(SubscriptionNotFound):
        app.close_subscription(subscription_id, "alice")
    assert topics(app) == [
        "SubscriptionBook.Opened",
        "SubscriptionBook.Admitted",
        "Subscription.Opened",
        "Subscription.Advanced",
        "Subscription.Closed",
        "SubscriptionBook.Released",
    ]


def test_subscription_names_are_unique_per_owner_and_free_again_once_closed(
    app: DefiRealtime,
) -> None:
    first = app.open_subscription("alice", "prices", name="eth")
    with pytest.raises(SubscriptionNameTaken) as taken:
        app.open_subscription("alice", "protocols", name="eth")
    assert taken.value.existing == str(first)
    # Another owner's names are theirs.
    app.open_subscription("bob", "prices", name="eth")
    app.close_subscription(first, "alice")
    second = app.open_subscription("alice", "protocols", name="eth")
    assert app.get_subscription(second, "alice").name == "eth"


def test_subscriptions_per_owner_are_bounded(app: DefiRealtime) -> None:
    app.open_subscription("alice", "prices", limit=2)
    app.open_subscription("alice", "prices", limit=2)
    with pytest.raises(SubscriptionQuotaExceeded):
        app.open_subscription("alice", "prices", limit=2)
    assert len(app.list_subscriptions("alice")) == 2


def test_a_subscription_starts_at_the_head_unless_told(app: DefiRealtime) -> None:
    app.issue_api_key("k")  # something in the log
    before = head(app)
    at_head = app.open_subscription("alice", "prices")
    assert app.get_subscription(at_head, "alice").position == before > 0
    from_start = app.open_subscription("alice", "prices", position=0)
    assert app.get_subscription(from_start, "alice").position == 0


def test_advance_subscriptions_in_one_transaction(app: DefiRealtime) -> None:
    mine = app.open_subscription("alice", "prices")
    closed = app.open_subscription("alice", "prices")
    app.close_subscription(closed, "alice")
    before = head(app)
    gone = app.advance_subscriptions(
        {mine: ("alice", 5), closed: ("alice", 5), uuid4(): ("alice", 5)}
    )
    assert mine not in gone
    assert closed in gone
    assert len(gone) == 2
    assert app.get_subscription(mine, "alice").position == 5
    assert head(app) == before + 1
    # Another owner's id is gone for them, and nothing moves.
    assert app.advance_subscriptions({mine: ("mallory", 9)}) == {mine}
    assert app.get_subscription(mine, "alice").position == 5


def test_subscription_channel_is_checked(app: DefiRealtime) -> None:
    with pytest.raises(InvalidSubscription):
        app.open_subscription("alice", "everything")
    assert head(app) == 0


# --- validation: parse_observation / parse_price / build_batch ---------------------------


def test_parse_observation_defaults_and_listing() -> None:
    assert parse_observation(obs("aave-v3", 5, int(T0)), index=3) == RecordMetric(
        protocol="aave-v3",
        metric="tvl",
        chain="total",
        value=5.0,
        observed_at=T0,
        source="",
        listing=None,
        index=3,
    )
    parsed = parse_observation(
        named(
            "aave-v3",
            5,
            T0,
            metric="fees_24h",
            chain="base",
            source="s",
            category="Lending",
            chains=["base"],
            url="https://aave.com",
        )
    )
    assert (parsed.metric, parsed.chain, parsed.source) == ("fees_24h", "Base", "s")
    assert parsed.listing == Listing(
        protocol="aave-v3",
        name="AAVE-V3",
        category="Lending",
        chains=("Base",),
        url="https://aave.com",
        observed_at=T0,
    )


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("aave", "item must be an object"),
        ([("protocol", "aave")], "item must be an object"),
        (None, "item must be an object"),
        (obs(extra=1, other=2), "unknown field(s): 'extra', 'other'"),
        ({"value": 1, "observed_at": T0}, "protocol is required"),
        ({"protocol": "aave", "observed_at": T0}, "value is required"),
        ({"protocol": "aave", "value": 1}, "observed_at is required"),
        (obs(protocol=5), "invalid protocol slug 5"),
        (obs(protocol="Aave V3"), "invalid protocol slug 'Aave V3'"),
        (obs(value="12"), "value must be a number, got str"),
        (obs(value=True), "value must be a number, got bool"),
        (obs(value=None), "value must be a number, got NoneType"),
        (obs(value=[1]), "value must be a number, got list"),
        (obs(value=-0.5), "value must be non-negative, got -0.5"),
        (obs(value=math.inf), "value must be finite, got inf"),
        (obs(value=10**400), "value must be finite, got a too large integer"),
        (obs(metric="price"), "unknown metric 'price'"),
        (obs(metric=["tvl"]), "unknown metric ['tvl']"),
        (obs(chain=5), "chain must be a string"),
        (obs(chain=""), "chain must be a non-empty string"),
        (obs(source=5), "source must be a string"),
        (obs(source="s" * 2001), "source is too long"),
        (obs(name=""), "name must be a non-empty string"),
        (obs(name=7), "name must be a string"),
        (obs(chains="ethereum"), "chains must be a list of strings"),
        (obs(chains=[1]), "chains must be a list of strings"),
        (obs(observed_at=True), "observed_at must be unix seconds or an ISO-8601 string"),
        (obs(observed_at=None), "observed_at must be unix seconds or an ISO-8601 string"),
        (obs(observed_at="yesterday"), "observed_at 'yesterday' is neither unix seconds nor"),
        (obs(observed_at=T0 * 1000), "observed_at out of range"),
        (obs(observed_at=0), "observed_at out of range: 0"),
        (obs(observed_at=math.nan), "observed_at out of range: nan"),
        (obs(observed_at=10**400), "observed_at out of range"),
        (obs(observed_at="1999-12-31T23:59:59Z"), "observed_at out of range"),
        (obs(observed_at="2100-01-01T00:00:00Z"), "observed_at out of range"),
    ],
)
def test_parse_observation_rejects(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidItem) as caught:
        parse_observation(raw)
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (obs(protocol="aave\x00"), "protocol", "invalid protocol slug"),
        (obs(protocol="aave\u202e"), "protocol", "invalid protocol slug"),
        (obs(chain="Base\x00"), "chain", "chain contains an invisible or control character"),
        (obs(chain="Ba\u200bse"), "chain", "chain contains an invisible or control character"),
        (obs(source="llama\x00"), "source", "source contains a control character (U+0000 at 5)"),
        (named(name="x\x00y"), "name", "name contains a control character (U+0000 at 1)"),
        (named(name="x\x85y"), "name", "name contains a control character (U+0085 at 1)"),
        (named(category="Lend\x1bing"), "category", "category contains a control character"),
        (named(url="https://x/\x7f"), "url", "url contains a control character (U+007F"),
        (named(chains=["Ethereum", "Ba\x00se"]), "chains", "chains[1] contains an invisible"),
        (named(chains=["Ethereum", "Ba\u2066se"]), "chains", "chains[1] contains an invisible"),
        (named(chains=["Ethereum"] * 200_000), "chains", "chains lists 200000 chains; at most 500"),
        (named(chains=[""]), "chains", "chains[0] must be a non-empty string"),
        (obs(colour="red"), "colour", "unknown field(s): 'colour'"),
        ({"protocol": "aave", "observed_at": T0}, "value", "value is required"),
        ("aave", None, "item must be an object"),
    ],
)
def test_rejections_name_the_field(raw: Any, field: str | None, reason: str) -> None:
    with pytest.raises(InvalidItem) as caught:
        parse_observation(raw)
    assert (caught.value.field, str(caught.value)[: len(reason)]) == (field, reason)
    [rejection] = build_batch([raw]).rejected
    assert rejection.to_json() == {
        "kind": "observation",
        "index": 0,
        "field": field,
        "reason": str(caught.value),
    }


def test_text_fields_accept_unicode_and_identifiers_plain_text() -> None:
    parsed = parse_observation(
        named(name="Ξ Café 🚀 (v2)", category="Dexs", chains=["OP Mainnet", "ZKsync Era"])
    )
    assert parsed.listing is not None
    assert parsed.listing.name == "Ξ Café 🚀 (v2)"
    assert parsed.listing.chains == ("OP Mainnet", "ZKsync Era")


def test_prices_and_listings_refuse_control_characters() -> None:
    price = {"token": "coingecko:eth", "price": 1, "observed_at": T0}
    batch = build_batch(
        prices=[{**price, "token": "coingecko:eth\x00"}, {**price, "source": "s\x00"}],
        listings=[{"protocol": "lido", "name": "Li\x00do"}],
        partial=True,
    )
    assert [(r.kind, r.index, r.field) for r in batch.rejected] == [
        ("price", 0, "token"),
        ("price", 1, "source"),
        ("listing", 0, "name"),
    ]


def test_no_duplicate_keys_names_the_key() -> None:
    decoder = json.JSONDecoder(object_pairs_hook=no_duplicate_keys)
    assert decoder.decode('{"a": {"b": 1, "c": 2}, "d": [{"e": 3}]}') == {
        "a": {"b": 1, "c": 2},
        "d": [{"e": 3}],
    }
    with pytest.raises(DuplicateKeyError, match="duplicate key 'value'") as caught:
        decoder.decode('{"protocol": "x", "value": -1, "value": 5}')
    assert caught.value.key == "value"
    with pytest.raises(ValueError, match="duplicate key 'b'"):
        decoder.decode('[{"a": 1}, {"b": 1, "b": 1}]')


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1_700_000_000, 1_700_000_000.0),
        (1_700_000_000.25, 1_700_000_000.25),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20+00:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),  # naive means UTC
        ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
        ("2023-11-14T22:13:20.5Z", 1_700_000_000.5),
        (" 2023-11-14T22:13:20Z ", 1_700_000_000.0),
        ("2023-11-14", 1_699_920_000.0),
        ("2000-01-01T00:00:00Z", 946_684_800.0),
    ],
)
def test_parse_timestamp(raw: Any, expected: float) -> None:
    assert parse_timestamp(raw) == expected
    assert parse_observation(obs(observed_at=raw)).observed_at == expected


def test_parse_price() -> None:
    raw = {"token": "coingecko:ethereum", "price": 3100, "observed_at": "2023-11-14T22:13:20Z"}
    assert parse_price(raw, index=2) == RecordPrice(
        token="coingecko:ethereum",
        price=3100.0,
        observed_at=T0,
        confidence=None,
        source="",
        index=2,
    )
    assert parse_price({**raw, "confidence": 0, "source": "x"}).confidence == 0.0
    assert parse_price({**raw, "confidence": 1}).confidence == 1.0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"price": 1, "observed_at": T0}, "token is required"),
        ({"token": "coingecko:eth", "observed_at": T0}, "price is required"),
        ({"token": "coingecko:eth", "price": 1}, "observed_at is required"),
        ({"token": "eth", "price": 1, "observed_at": T0}, "invalid token id 'eth'"),
        ({"token": "coingecko:eth", "price": "1", "observed_at": T0}, "price must be a number"),
        ({"token": "coingecko:eth", "price": -1, "observed_at": T0}, "price must be non-negative"),
        ({"token": "coingecko:eth", "price": math.nan, "observed_at": T0}, "price must be finite"),
        (
            {"token": "coingecko:eth", "price": 1, "observed_at": T0, "confidence": 1.5},
            "confidence must be between 0 and 1",
        ),
        (
            {"token": "coingecko:eth", "price": 1, "observed_at": T0, "confidence": "high"},
            "confidence must be a number",
        ),
        (
            {"token": "coingecko:eth", "price": 1, "observed_at": T0, "volume": 3},
            "unknown field(s): 'volume'",
        ),
        ({"token": "coingecko:eth", "price": 1, "observed_at": 1e13}, "observed_at out of range"),
        (42, "item must be an object"),
    ],
)
def test_parse_price_rejects(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidItem) as caught:
        parse_price(raw)
    assert str(caught.value).startswith(reason)


def test_parse_listing() -> None:
    assert parse_listing({"protocol": "lido", "name": "Lido"}) == Listing("lido", "Lido")
    with pytest.raises(InvalidItem, match="a listing needs at least a name"):
        parse_listing({"protocol": "lido", "category": "x"})
    with pytest.raises(InvalidItem, match="invalid protocol slug"):
        parse_listing({"name": "Lido"})
    with pytest.raises(InvalidItem, match="unknown field"):
        parse_listing({"protocol": "lido", "name": "Lido", "value": 1})


def test_build_batch_collects_a_rejection_per_bad_item() -> None:
    batch = build_batch(
        [obs(), obs(value=-1), "x"],
        [{"token": "bad", "price": 1, "observed_at": T0}],
        [{"protocol": "lido"}, {"protocol": "lido", "name": "Lido"}],
        partial=True,
    )
    assert [m.index for m in batch.metrics] == [0]
    assert batch.listings == (Listing("lido", "Lido"),)
    assert batch.prices == ()
    assert [(r.kind, r.index) for r in batch.rejected] == [
        ("observation", 1),
        ("observation", 2),
        ("price", 0),
        ("listing", 0),
    ]
    assert batch.partial is True
    assert batch.size == 2


def test_build_batch_limits_its_size() -> None:
    item = obs()
    assert build_batch([item] * MAX_ITEMS_PER_BATCH).size == MAX_ITEMS_PER_BATCH
    with pytest.raises(InvalidItem, match=f"at most {MAX_ITEMS_PER_BATCH} items"):
        build_batch([item] * MAX_ITEMS_PER_BATCH, prices=[item])


# --- the fast path of validation decides exactly as the checks do ------------------------

_TEXTS = st.one_of(
    st.sampled_from(["Aave V3", "Ethereum", "total", "Base", "", " ", "\t", "x" * 201]),
    st.sampled_from(["a\x00b", "\x1b[2J", "c1\x85", "zw\u200bsp", "rlo\u202e", "bom\ufeff"]),
    st.text(max_size=12),
)
_SLUGS = st.one_of(
    st.sampled_from(["aave-v3", "ether.fi-stake", "a..b", "-a", "Aave", "a_b", "a" * 201]),
    st.from_regex(r"[a-z0-9.\-_ A\x00\u200b]{0,8}", fullmatch=True),
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([0, -0.0, 1e308, 10**309, True, False, T0, T0 * 1000, 946_684_800]),
)
_ANY = st.one_of(st.none(), _TEXTS, _NUMBERS, st.lists(_TEXTS, max_size=3), st.just({}))


@st.composite
def _raw_items(draw: st.DrawFn, *, listing: bool) -> Any:
    """A valid item (about half of them), with some fields replaced by arbitrary, mostly
    bad, values or left out, and now and then an unknown field."""
    usual: dict[str, Any] = {
        "protocol": "aave-v3",
        "name": draw(st.sampled_from(["Aave V3", "Ξ Café 🚀", "x" * 200])),
        "category": draw(st.sampled_from(["Lending", "", "x" * 2000])),
        "url": "https://aave.com",
        "chains": draw(st.sampled_from([[], ["Ethereum"], ["OP Mainnet", "Base"]])),
        "observed_at": draw(st.sampled_from([T0, int(T0), 946_684_800, 4_102_444_799.5])),
    }
    odd: dict[str, st.SearchStrategy[Any]] = {
        "protocol": st.one_of(_SLUGS, _ANY),
        "name": st.one_of(_TEXTS, _ANY),
        "category": st.one_of(_TEXTS, _ANY),
        "url": st.one_of(_TEXTS, _ANY),
        "chains": st.one_of(st.lists(_TEXTS, max_size=4), _ANY),
        "observed_at": st.one_of(
            st.floats(min_value=9e8, max_value=4.2e9), st.sampled_from(["2025-12-06"]), _ANY
        ),
    }
    if not listing:
        usual |= {
            "metric": draw(st.sampled_from(["tvl", "volume_24h"])),
            "chain": draw(st.sampled_from(["total", "Ethereum"])),
            "value": draw(st.sampled_from([0, 0.0, 1.5e9, 10**20, 1e308])),
            "source": draw(st.sampled_from(["defillama:snapshot", ""])),
        }
        odd |= {
            "metric": st.one_of(st.sampled_from(["tvl", "fees_24h", "price"]), _ANY),
            "chain": st.one_of(_TEXTS, _ANY),
            "value": st.one_of(st.floats(min_value=0, max_value=1e12), _NUMBERS, _ANY),
            "source": st.one_of(_TEXTS, _ANY),
        }
    item: dict[str, Any] = {}
    changes = draw(st.integers(0, 3))
    for key in usual:
        what = draw(st.integers(0, 9))
        if what < changes:  # arbitrary
            item[key] = draw(odd[key])
        elif what < changes + 2 and key not in ("protocol", "value", "observed_at"):
            continue  # left out (optional)
        else:
            item[key] = usual[key]
    if draw(st.integers(0, 9)) == 0:
        item["extra"] = 1
    return item


def _outcome(parse: Any, raw: Any) -> Any:
    try:
        command = parse(raw)
    except InvalidItem as error:
        return ("rejected", str(error), error.field)
    # Equal values of another type (1 and 1.0) would be stored differently: compare types.
    values = [getattr(command, f.name) for f in dataclasses.fields(command)]
    listing = getattr(command, "listing", None)
    if listing is not None:
        values += [getattr(listing, f.name) for f in dataclasses.fields(listing)]
    return command, [type(value) for value in values]


@settings(max_examples=400, deadline=None)
@given(raw=_raw_items(listing=False))
def test_observation_fast_path_decides_as_the_checks(raw: Any) -> None:
    from defi_realtime.application.ingest import _checked_observation, _plain_observation

    fast = _plain_observation(raw, 3)
    checked = _outcome(lambda r: _checked_observation(r, 3), raw)
    event(f"fast path: {fast is not None}, checks: {checked[0] != 'rejected'}")
    if fast is not None:
        assert _outcome(lambda r: fast, raw) == checked
    assert _outcome(lambda r: parse_observation(r, 3), raw) == checked


@settings(max_examples=300, deadline=None)
@given(raw=_raw_items(listing=True))
def test_listing_fast_path_decides_as_the_checks(raw: Any) -> None:
    from defi_realtime.application.ingest import _checked_listing, _plain_listing

    fast = _plain_listing(raw)
    checked = _outcome(_checked_listing, raw)
    event(f"fast path: {fast is not None}, checks: {checked[0] != 'rejected'}")
    if fast is not None:
        assert _outcome(lambda r: fast, raw) == checked
    assert _outcome(parse_listing, raw) == checked


def test_usual_items_take_the_fast_path() -> None:
    from defi_realtime.application.ingest import _plain_listing, _plain_observation

    item = named(category="Lending", chains=["Ethereum"], url="https://x", source="s")
    assert _plain_observation(item, 0) == parse_observation(item)
    assert _plain_listing({"protocol": "lido", "name": "Lido", "observed_at": T0}) is not None


# --- ingest: which batch of a group recorded which event (issue 13, ADR 0041) ----------


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["obs", "price"]), st.sampled_from(["a", "b", "c"])),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_each_batch_of_a_group_knows_the_positions_it_recorded(
    plan: list[list[tuple[str, str]]],
) -> None:
    """Batches of several accounts committed in one group, touching the same protocols and
    tokens: each event's position is in exactly one batch's ``recorded`` ranges, the batch
    whose item it records (values encode the batch)."""
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        batches = []
        for k, items in enumerate(plan):
            observations = [
                named(f"p-{name}", 1000.0 * (k + 1) + i, T0 + i)
                for i, (kind, name) in enumerate(items)
                if kind == "obs"
            ]
            prices = [
                {
                    "token": f"coingecko:t-{name}",
                    "price": 1000.0 * (k + 1) + i,
                    "observed_at": T0 + i,
                }
                for i, (kind, name) in enumerate(items)
                if kind == "price"
            ]
            batches.append(build_batch(observations, prices))
        results = app.ingest(batches)
        owner: dict[int, int] = {}
        for k, result in enumerate(results):
            for first, last in result.recorded:
                for position in range(first, last + 1):
                    assert position not in owner
                    owner[position] = k
            assert result.audit_detail()["recorded"] == [list(span) for span in result.recorded]
        stored = notifications(app)
        assert sorted(owner) == [n.id for n in stored]
        for notification in stored:
            event: Any = app.mapper.to_domain_event(notification)
            value = getattr(event, "value", getattr(event, "price", None))
            if value is not None:
                assert int(value // 1000) - 1 == owner[notification.id]
    finally:
        app.close()


def test_ranges_compress_consecutive_positions() -> None:
    assert ranges([]) == []
    assert ranges([4]) == [(4, 4)]
    assert ranges([1, 2, 3, 7, 8, 10]) == [(1, 3), (7, 8), (10, 10)]
