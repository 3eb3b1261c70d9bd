"""DeFiLlama's ``oracles`` kept through the listing (ADR 0033): the domain, events stored
before it existed, ingest validation on both of its paths, and the log entry."""

from __future__ import annotations

import json
from typing import Any

import pytest
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex

from defi_realtime.adapters.event_store_log import _listing_data
from defi_realtime.application.hot_state import ProtocolState, fold_protocol
from defi_realtime.application.ingest import (
    InvalidItem,
    _checked_listing,
    _checked_observation,
    parse_listing,
    parse_observation,
)
from defi_realtime.application.log import LogEntry
from defi_realtime.domain.errors import InvalidObservation
from defi_realtime.domain.observations import MAX_ORACLES, check_oracles
from defi_realtime.domain.protocol import Protocol

T0 = 1_700_000_000.0


def _mapper() -> Mapper:
    transcoder = JSONTranscoder()
    transcoder.register(DatetimeAsISO())
    transcoder.register(UUIDAsHex())
    return Mapper(transcoder)


def _without_oracles(event: Any) -> Any:
    """``event`` as it was stored before oracles were kept: its state has no such key."""
    mapper = _mapper()
    stored = mapper.to_stored_event(event)
    state = json.loads(stored.state)
    del state["oracles"]
    return mapper.to_domain_event(
        type(stored)(
            originator_id=stored.originator_id,
            originator_version=stored.originator_version,
            topic=stored.topic,
            state=json.dumps(state).encode(),
        )
    )


def test_listing_and_update_carry_the_oracles() -> None:
    protocol = Protocol.create("aave-v3", "Aave V3", oracles=["Chainlink", "Chainlink"])
    assert protocol.oracles == ["Chainlink"]  # each name once
    assert protocol.update_details(oracles=["Chainlink"]) is False  # no change, no event
    assert protocol.update_details(oracles=["Chainlink", "RedStone"]) is True
    assert protocol.oracles == ["Chainlink", "RedStone"]
    # Details without oracles leave them alone.
    assert protocol.update_details(category="Lending") is True
    assert protocol.oracles == ["Chainlink", "RedStone"]
    events = protocol.collect_events()
    replayed = None
    for event in events:
        replayed = event.mutate(replayed)
    assert isinstance(replayed, Protocol)
    assert (replayed.oracles, replayed.category) == (["Chainlink", "RedStone"], "Lending")


def test_events_stored_before_oracles_existed_still_replay() -> None:
    original = Protocol.create("aave-v3", "Aave V3", oracles=["Chainlink"])
    original.update_details(oracles=["Pyth"])
    listed, updated = original.collect_events()
    old_listed = _without_oracles(listed)
    protocol = old_listed.mutate(None)
    assert protocol.oracles == []  # none known
    assert _listing_data(vars(old_listed)).keys() == {
        "name",
        "category",
        "chains",
        "url",
        "observed_at",
    }
    protocol = updated.mutate(protocol)
    assert protocol.oracles == ["Pyth"]
    # An old DetailsUpdated did not know oracles: it keeps those held.
    protocol.update_details(name="Aave")
    [renamed] = protocol.collect_events()
    again = updated.mutate(_without_oracles(listed).mutate(None))
    again = _without_oracles(renamed).mutate(again)
    assert (again.name, again.oracles) == ("Aave", ["Pyth"])


def test_the_hot_state_keeps_oracles_unless_an_entry_names_them() -> None:
    def entry(position: int, **data: Any) -> LogEntry:
        base = {"name": "Aave", "category": "Lending", "chains": [], "url": ""}
        return LogEntry(position, "protocol_updated", "aave", {**base, **data}, T0)

    state = fold_protocol(ProtocolState.unlisted("aave"), entry(1, oracles=["Chainlink"]))
    assert state is not None
    assert state.view({}).oracles == ("Chainlink",)
    state = fold_protocol(state, entry(2))
    assert state is not None
    assert state.oracles == ("Chainlink",)
    state = fold_protocol(state, entry(3, oracles=[]))
    assert state is not None
    assert state.oracles == ()


@pytest.mark.parametrize(
    ("oracles", "reason"),
    [
        ("Chainlink", "must be a list of strings"),
        ([1], "must be a list of strings"),
        ([""], "oracles[0] must be a non-empty string"),
        (["Chain\u200blink"], "oracles[0]"),
        (["x"] * (MAX_ORACLES + 1), f"at most {MAX_ORACLES}"),
    ],
)
def test_bad_oracle_lists_are_refused_with_a_reason(oracles: Any, reason: str) -> None:
    with pytest.raises(InvalidObservation, match=reason.replace("[", r"\[").replace("]", r"\]")):
        check_oracles(oracles)
    item = {"protocol": "aave", "value": 1.0, "observed_at": T0, "name": "A", "oracles": oracles}
    with pytest.raises(InvalidItem) as refused:
        parse_observation(item)
    assert refused.value.field == "oracles"
    with pytest.raises(InvalidItem):
        parse_listing({"protocol": "aave", "name": "A", "oracles": oracles})


def test_both_ingest_paths_read_oracles_alike() -> None:
    item = {"protocol": "aave", "value": 1.0, "observed_at": T0, "oracles": ["Pyth", "Pyth"]}
    fast, checked = parse_observation(item), _checked_observation(item, 0)
    assert fast.listing is not None
    assert checked.listing is not None
    assert fast.listing.oracles == checked.listing.oracles == ("Pyth",)
    listing = {"protocol": "aave", "name": "A", "oracles": ["Chainlink"], "observed_at": T0}
    assert parse_listing(listing) == _checked_listing(listing)
    assert parse_listing(listing).oracles == ("Chainlink",)
    # Without the key, the listing says nothing about oracles (None: keep those held).
    assert parse_listing({"protocol": "aave", "name": "A"}).oracles is None
