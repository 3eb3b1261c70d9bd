"""The frame models (``entrypoints/schemas/frames.py``) describe the frames the hub really
sends and accept exactly the client frames the hub accepts, and the AsyncAPI document
generated from them is well formed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.realtime import frames, protocol
from defi_realtime.application.realtime.durable import acked
from defi_realtime.application.realtime.replay import subscribed
from defi_realtime.entrypoints.asyncapi import asyncapi_document
from defi_realtime.entrypoints.schemas.frames import CLIENT_MESSAGES, SERVER_MESSAGES

T0 = 1_765_000_000.0
DAY = 86_400.0


# -- the server's frames ------------------------------------------------------------------


def _metric(position: int, value: float, at: float, **data: Any) -> LogEntry:
    fields = {"metric": "tvl", "chain": "total", "value": value, "observed_at": at, "source": ""}
    return LogEntry(position, "metric", "aave", {**fields, **data}, at)


def _price(position: int, value: float, at: float, confidence: float | None) -> LogEntry:
    fields = {"price": value, "observed_at": at, "confidence": confidence, "source": ""}
    return LogEntry(position, "price", "coingecko:ethereum", fields, at)


def _alert(position: int, kind: str, measure: float | None) -> LogEntry:
    fields = {"owner": "alice", "measure": measure, "observed_at": T0, "idempotency_key": "k"}
    return LogEntry(position, kind, "3f1c2e0a-rule", fields, T0)


ENTRIES = (
    LogEntry(1, "protocol_listed", "aave", {"name": "Aave", "chains": ["Ethereum"]}, T0),
    _metric(2, 100.0, T0),
    _metric(3, 10.0, T0, metric="volume_24h"),
    _metric(4, 1.0, T0, metric="fees_24h"),
    _price(5, 1_000.0, T0, None),
    _metric(6, 200.0, T0 + DAY),  # a day later: a 24 h change
    _metric(7, 11.0, T0 + DAY, metric="volume_24h"),
    _metric(8, 1.5, T0 + DAY, metric="fees_24h"),
    _metric(9, 150.0, T0 + DAY, chain="ethereum"),
    _metric(10, 50.0, T0 - 60),  # late: older than the current value
    _price(11, 1_100.0, T0 + DAY, 0.99),
    _alert(12, "alert_triggered", 2.5),
    _alert(13, "alert_resolved", None),
)


def _frame(encoded: frames.Encoded) -> dict[str, Any]:
    prefix, suffix = encoded
    frame: dict[str, Any] = json.loads(prefix + b"s1" + suffix)
    return frame


def _valid(frame: Mapping[str, Any]) -> None:
    SERVER_MESSAGES[frame["type"]].model_validate(frame)


@pytest.fixture(scope="module")
def state() -> HotState:
    state = HotState(record_facts=True)
    assert state.apply(LogBatch(after=0, last=ENTRIES[-1].position, entries=ENTRIES))
    return state


def _entry_frames(state: HotState) -> Iterator[tuple[LogEntry, dict[str, Any], dict[str, Any]]]:
    """Each entry's live frame and its frame read back from the log."""
    for entry in ENTRIES:
        channel = frames.channel_of(entry)
        if channel is not None:
            live = frames.encode(entry, channel, state.facts.get(entry.position))
            yield entry, _frame(live), _frame(frames.encode(entry, channel, None))


def test_live_and_logged_updates_and_alerts_are_valid_frames(state: HotState) -> None:
    seen = set()
    changes = {}
    for entry, live, logged in _entry_frames(state):
        _valid(live)
        _valid(logged)
        seen.add(live["type"])
        assert "snapshot" not in live
        if live["type"] == "update":
            assert logged["data"]["change24h"] is None
            assert logged["data"]["late"] is None
            assert live["data"]["late"] is (entry.position == 10)
            changes[entry.position] = live["data"]["change24h"]
    assert seen == {"update", "alert"}
    assert changes[6] == pytest.approx(100.0)
    assert changes[11] == pytest.approx(10.0)
    assert changes[9] is None  # a chain value
    assert changes[10] is None  # a late observation


def test_snapshot_frames_are_valid(state: HotState) -> None:
    position = state.position
    snapshot = [
        _frame(encoded)
        for channel in ("protocols", "volumes")
        for _, _, encoded in frames.protocol_snapshot(state.protocols["aave"], channel, position)
    ]
    snapshot.append(_frame(frames.price_snapshot(state.tokens["coingecko:ethereum"], position)))
    assert len(snapshot) == 5  # tvl total and ethereum, volume_24h, fees_24h, the price
    for frame in snapshot:
        _valid(frame)
        assert frame["snapshot"] is True
        assert frame["position"] == position
        assert frame["data"]["late"] is False


@pytest.mark.parametrize("request_id", [None, "req-1", 7])
def test_replies_are_valid_frames(request_id: str | int | None) -> None:
    for code, meaning in protocol.ERROR_CODES.items():
        _valid(json.loads(protocol.error_frame(code, meaning, request_id)))
    for recovered in (True, False):
        for acknowledged in (None, 40):
            # ``subscribed`` reads the subscription's id, channel and acknowledged position.
            subscription = SimpleNamespace(id="s1", channel="alerts", acknowledged=acknowledged)
            _valid(json.loads(subscribed(subscription, 42, recovered, request_id)))  # type: ignore[arg-type]
    _valid(json.loads(acked("0b1c", 42, request_id)))


@pytest.mark.parametrize(
    "change",
    [
        {"extra": 1},  # an undocumented field
        {"snapshot": False},  # snapshot frames say true; others leave it out
        {"channel": "alerts"},
        {"position": -1},
        {"data": {"id": "aave", "value": 1.0}},
    ],
)
def test_a_frame_that_drifts_from_its_model_is_refused(state: HotState, change: Any) -> None:
    _, live, _ = next(_entry_frames(state))
    with pytest.raises(ValidationError):
        _valid({**live, **change})


# -- the client's frames: the models and the hub's parser agree --------------------------


def hub_accepts(message: Mapping[str, Any]) -> bool:
    """What the hub does with a decoded client frame: its ``id``, then the message."""
    try:
        protocol.request_id_of(message)
        protocol.parse(message)
    except protocol.FrameError:
        return False
    return True


def model_accepts(message: Mapping[str, Any]) -> bool:
    kind = message.get("type")
    model = CLIENT_MESSAGES.get(kind) if isinstance(kind, str) else None
    if model is None:
        return False
    try:
        model.model_validate(message)
    except ValidationError:
        return False
    return True


def _subscribe(**fields: Any) -> dict[str, Any]:
    return {"type": "subscribe", "channel": "protocols", **fields}


WALLET = "0x" + "ab" * 20
# Both the models and the document's JSON schemas judge these alike.
MESSAGES = [
    _subscribe(),
    _subscribe(
        params={
            "protocolIds": ["aave"],
            "tokenIds": [],
            "chains": ["Ethereum"],
            "categories": ["Dexs"],
            "minTvl": 0,
        },
        since=0,
        coalesce=True,
        id="a" * protocol.MAX_REQUEST_ID_CHARS,
    ),
    _subscribe(params=None, since=None, id=None),
    _subscribe(params={"minTvl": 1.5}, id=-(2**53)),
    _subscribe(channel="prices", snapshot=True),
    _subscribe(snapshot=True, since=None),
    _subscribe(snapshot=False, since=5),
    _subscribe(channel="alerts", coalesce=True, since=3),
    _subscribe(params={"protocolIds": ["a"] * protocol.MAX_FILTER_VALUES}),
    _subscribe(channel="smart-money"),
    _subscribe(channel="smart-money", params={}, since=3),
    _subscribe(
        channel="smart-money",
        params={"top": protocol.MAX_TOP, "wallet": WALLET.upper().replace("0X", "0x")},
    ),
    _subscribe(channel="smart-money", params={"top": 1, "chainId": 1337, "ranking": "model"}),
    _subscribe(channel="smart-money", params={"wallet": None, "chainId": None}),
    _subscribe(channel="mev", params={}),
    {"type": "unsubscribe", "subscriptionId": "s1", "id": 1},
    {"type": "attach", "subscription": "0b1c", "id": 2},
    {"type": "attach", "subscription": "a" * protocol.MAX_SUBSCRIPTION_ID_CHARS},
    {"type": "ack", "subscriptionId": "0b1c", "position": 0, "id": "a"},
    {"type": "ack", "subscriptionId": "0b1c", "position": 12},
    {"type": "ping"},
    {"type": "ping", "id": "p"},
    # refused
    _subscribe(snapshot=True, since=0),
    _subscribe(channel="alerts", snapshot=True),
    _subscribe(snapshot="yes"),
    _subscribe(snapshot=None),
    _subscribe(coalesce="true"),
    _subscribe(coalesce=None),
    _subscribe(unknown=1),
    _subscribe(channel="nope"),
    {"type": "subscribe"},
    _subscribe(since=-1),
    _subscribe(since=True),
    _subscribe(since="1"),
    _subscribe(params=[]),
    _subscribe(params={"slugs": ["aave"]}),
    _subscribe(params={"protocolIds": "aave"}),
    _subscribe(params={"chains": [1]}),
    _subscribe(params={"protocolIds": ["a"] * (protocol.MAX_FILTER_VALUES + 1)}),
    _subscribe(params={"minTvl": -1}),
    _subscribe(params={"minTvl": True}),
    _subscribe(params={"minTvl": "1"}),
    _subscribe(channel="smart-money", snapshot=True),
    _subscribe(channel="smart-money", params={"top": 0}),
    _subscribe(channel="smart-money", params={"top": protocol.MAX_TOP + 1}),
    _subscribe(channel="smart-money", params={"top": True}),
    _subscribe(channel="smart-money", params={"top": "5"}),
    _subscribe(channel="smart-money", params={"top": None}),
    _subscribe(channel="smart-money", params={"wallet": "0x12"}),
    _subscribe(channel="smart-money", params={"wallet": WALLET + "\n"}),
    _subscribe(channel="smart-money", params={"chainId": 0}),
    _subscribe(channel="smart-money", params={"chainId": True}),
    _subscribe(channel="smart-money", params={"ranking": "best"}),
    _subscribe(channel="smart-money", params={"protocolIds": ["aave"]}),
    _subscribe(channel="smart-money", params={"chains": None}),
    _subscribe(params={"top": 5}),
    _subscribe(params={"wallet": None}),
    _subscribe(channel="mev", params={"top": 5}),
    _subscribe(channel="mev", params={"protocolIds": ["aave"]}),
    _subscribe(id=True),
    _subscribe(id=1.5),
    _subscribe(id="a" * (protocol.MAX_REQUEST_ID_CHARS + 1)),
    _subscribe(id=2**53 + 1),
    _subscribe(id=[]),
    {"type": "unsubscribe"},
    {"type": "unsubscribe", "subscriptionId": 1},
    {"type": "attach"},
    {"type": "attach", "subscription": 1},
    {"type": "attach", "subscription": "a" * (protocol.MAX_SUBSCRIPTION_ID_CHARS + 1)},
    {"type": "attach", "subscription": "x", "channel": "prices"},
    {"type": "ack", "subscriptionId": "x"},
    {"type": "ack", "subscriptionId": "x", "position": -1},
    {"type": "ack", "subscriptionId": "x", "position": True},
    {"type": "ack", "subscriptionId": "x", "position": 1.5},
    {"type": "ack", "subscriptionId": "x", "position": "1"},
    {"type": "ack", "subscriptionId": None, "position": 1},
    {"type": "ack", "subscriptionId": "x", "position": 1, "extra": 1},
    {"type": "nope"},
    {"channel": "protocols"},
]
# JSON Schema cannot tell 1.0 from 1 and knows no float range: the models and the hub can.
NUMBER_EDGES = [
    _subscribe(since=1.0),
    _subscribe(since=10**400),
    _subscribe(params={"minTvl": 10**308}),
    _subscribe(params={"minTvl": 10**309}),
    _subscribe(params={"minTvl": float("inf")}),
    _subscribe(params={"minTvl": float("nan")}),
]


@pytest.mark.parametrize("message", MESSAGES + NUMBER_EDGES, ids=repr)
def test_the_models_accept_what_the_hub_accepts(message: dict[str, Any]) -> None:
    assert model_accepts(message) == hub_accepts(message)


def test_the_examples_cover_both_answers() -> None:
    assert {hub_accepts(message) for message in MESSAGES} == {True, False}


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
# Each field's values, the boundaries included: mostly valid, some just out of bounds.
_STRINGS = st.lists(st.text(max_size=3), max_size=3) | st.sampled_from(
    [["a"] * protocol.MAX_FILTER_VALUES, ["a"] * (protocol.MAX_FILTER_VALUES + 1)]
)
_PARAMS = st.none() | st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(protocol.FILTER_KEYS - {"minTvl"}, _STRINGS),
        "minTvl": st.floats() | st.integers() | st.just(10**309),
    },
)
_SMART_MONEY_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "top": st.integers(min_value=-1, max_value=protocol.MAX_TOP + 1),
        "wallet": st.none() | st.just(WALLET) | st.text(max_size=3),
        "chainId": st.none() | st.integers(min_value=-1, max_value=2**54),
        "ranking": st.sampled_from([*protocol.SMART_MONEY_RANKINGS, "x"]),
    },
)
_IDS = (
    st.none()
    | st.text(max_size=3)
    | st.integers()
    | st.sampled_from(
        ["a" * protocol.MAX_REQUEST_ID_CHARS, "a" * (protocol.MAX_REQUEST_ID_CHARS + 1)]
    )
    | st.sampled_from([2**53, 2**53 + 1, -(2**53), -(2**53) - 1])
)
_SUBSCRIBE_FIELDS = {
    "channel": st.sampled_from(protocol.CHANNELS),
    "params": _PARAMS | _SMART_MONEY_PARAMS,
    "since": st.none() | st.integers(min_value=-2),
    "snapshot": st.booleans(),
    "coalesce": st.booleans(),
    "id": _IDS,
}


@st.composite
def _subscribes(draw: st.DrawFn) -> dict[str, Any]:
    """A subscribe message, with at most one field (or a filter) replaced by any JSON."""
    message = draw(
        st.fixed_dictionaries(
            {"type": st.just("subscribe"), "channel": _SUBSCRIBE_FIELDS["channel"]},
            optional={k: v for k, v in _SUBSCRIBE_FIELDS.items() if k != "channel"},
        )
    )
    broken = draw(st.sampled_from([None, *_SUBSCRIBE_FIELDS, "extra", "filter"]))
    if broken == "filter":
        keys = sorted(protocol.FILTER_KEYS | protocol.SMART_MONEY_KEYS)
        key = draw(st.sampled_from([*keys, "protocol_ids"]))
        message["params"] = {**(message.get("params") or {}), key: draw(_JSON)}
    elif broken is not None:
        message[broken] = draw(_JSON)
    return message


# Unsubscribe refuses any other field; ping ignores them (padding).
_UNSUBSCRIBE = st.fixed_dictionaries(
    {"type": st.just("unsubscribe")},
    optional={
        "subscriptionId": st.text(max_size=3) | _JSON,
        "id": _IDS | _JSON,
        "extra": _JSON,
    },
)
_PING = st.fixed_dictionaries(
    {"type": st.just("ping")}, optional={"id": _IDS | _JSON, "pad": _JSON}
)
_ATTACH = st.fixed_dictionaries(
    {"type": st.just("attach")},
    optional={"subscription": st.text(max_size=3) | _JSON, "id": _IDS | _JSON, "extra": _JSON},
)
_ACK = st.fixed_dictionaries(
    {"type": st.just("ack")},
    optional={
        "subscriptionId": st.text(max_size=3) | _JSON,
        "position": st.integers(min_value=-2) | _JSON,
        "id": _IDS | _JSON,
        "extra": _JSON,
    },
)
_UNKNOWN = st.dictionaries(st.sampled_from(["type", "channel", "id"]), _JSON)


@settings(max_examples=400, deadline=None)
@given(_subscribes() | _UNSUBSCRIBE | _PING | _ATTACH | _ACK | _UNKNOWN)
def test_the_models_and_the_hub_agree_on_any_message(message: dict[str, Any]) -> None:
    assert model_accepts(message) == hub_accepts(message)


# -- the AsyncAPI document ----------------------------------------------------------------


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    # As served: through JSON.
    document: dict[str, Any] = json.loads(json.dumps(asyncapi_document()))
    return document


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every ``(key, value)`` pair of every object in ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    target: Any = document
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def test_the_document_is_well_formed_asyncapi_2_6(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "2.6.0"
    assert document["info"]["title"]
    assert document["info"]["version"]
    refs = [value for key, value in _walk(document) if key == "$ref"]
    assert refs
    for ref in refs:
        assert _resolve(document, ref) is not None, ref
    # Every nested schema is hoisted into components.schemas.
    assert not [key for key, _ in _walk(document) if key in {"$defs", "definitions"}]
    components = document["components"]
    for name, schema in components["schemas"].items():
        assert re.fullmatch(r"[\w.\-]+", name), name
        assert jsonschema_rs.meta.is_valid(schema), name
    for name, message in components["messages"].items():
        assert set(message) <= {"name", "title", "summary", "contentType", "payload"}
        assert message["summary"]
        payload = message["payload"]
        assert payload["type"] == "object"
        assert payload["properties"]["type"]["const"] == name
        assert jsonschema_rs.meta.is_valid(payload), name
    channel = document["channels"]["/v2/realtime"]
    for operation, models in (("publish", CLIENT_MESSAGES), ("subscribe", SERVER_MESSAGES)):
        sent = [_resolve(document, ref["$ref"]) for ref in channel[operation]["message"]["oneOf"]]
        assert [message["name"] for message in sent] == list(models)


def test_the_document_speaks_the_protocols_vocabulary(document: dict[str, Any]) -> None:
    messages = document["components"]["messages"]
    assert set(CLIENT_MESSAGES) == set(protocol.CLIENT_MESSAGE_TYPES)
    assert set(SERVER_MESSAGES) == set(protocol.SERVER_MESSAGE_TYPES)
    subscribe = messages["subscribe"]["payload"]["properties"]
    assert set(subscribe) == protocol.SUBSCRIBE_FIELDS
    assert subscribe["channel"]["enum"] == list(protocol.CHANNELS)
    filters = document["components"]["schemas"]["Filters"]["properties"]
    assert set(filters) == protocol.FILTER_KEYS
    smart_money = document["components"]["schemas"]["SmartMoneyFilters"]["properties"]
    assert set(smart_money) == protocol.SMART_MONEY_KEYS
    codes = messages["error"]["payload"]["properties"]["code"]["enum"]
    assert codes == list(protocol.ERROR_CODES)
    assert [entry["code"] for entry in document["x-close-codes"]] == list(protocol.CLOSE_CODES)


@pytest.mark.parametrize("message", MESSAGES, ids=repr)
def test_the_documents_schemas_accept_what_the_hub_accepts(
    document: dict[str, Any], message: dict[str, Any]
) -> None:
    names = document["components"]["messages"]
    kind = message.get("type")
    if kind not in names:
        assert not hub_accepts(message)
        return
    # The payload's refs (#/components/...) resolve against the document's components.
    schema = {**names[kind]["payload"], "components": document["components"]}
    assert jsonschema_rs.Draft7Validator(schema).is_valid(message) == hub_accepts(message)
