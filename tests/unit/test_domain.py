"""Domain tests: given events -> command -> expected new events (and state).

Every test builds the "given" events with the aggregate's own commands, replays them into a
fresh aggregate (so the state a command sees is the state the events rebuild), runs one
command and compares the new pending events exactly: class name and attributes, without
the envelope (id, version, timestamp, topic).
"""

from __future__ import annotations

import gc
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import hypothesis
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Mapper, UUIDAsHex
from hypothesis import strategies as st

from defi_realtime.domain.account import Account
from defi_realtime.domain.alert_rule import AlertRule, InvalidRule, RuleBook, RuleQuotaExceeded
from defi_realtime.domain.alert_values import MAX_COOLDOWN, parse_target
from defi_realtime.domain.api_key import TIER_LIMITS, ApiKey, InvalidTier, TierLimits, hash_key
from defi_realtime.domain.errors import DomainError, InvalidObservation, InvalidTransition
from defi_realtime.domain.observations import (
    MAX_CHAINS,
    check_chains,
    check_label,
    check_text,
    check_timestamp,
    check_value,
    is_chain_list,
    is_label,
    is_text,
    is_timestamp,
    is_value,
)
from defi_realtime.domain.protocol import SLUG_PATTERN, Protocol, check_slug, is_slug, slugify
from defi_realtime.domain.recent import RECENT_PER_SERIES
from defi_realtime.domain.subscription import (
    InvalidSubscription,
    Subscription,
    SubscriptionBook,
    SubscriptionNameTaken,
    SubscriptionQuotaExceeded,
)
from defi_realtime.domain.token import Token, canonical_token_id, check_token_id

T0 = 1_700_000_000.0
ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})

Fact = tuple[str, dict[str, Any]]


def facts(events: Iterable[Any]) -> list[Fact]:
    """Events as (class name, attributes without the envelope)."""
    return [
        (type(event).__name__, {k: v for k, v in vars(event).items() if k not in ENVELOPE})
        for event in events
    ]


def given(events: Sequence[Any]) -> Any:
    """The aggregate the given events rebuild (no pending events)."""
    aggregate: Aggregate | None = None
    for event in events:
        aggregate = event.mutate(aggregate)
    assert aggregate is not None
    assert aggregate.version == len(events)
    return aggregate


def then(aggregate: Aggregate) -> list[Fact]:
    """The events the command just recorded."""
    return facts(aggregate.collect_events())


def listed(slug: str = "aave-v3", **kwargs: Any) -> Protocol:
    return given(Protocol.create(slug, kwargs.pop("name", "Aave V3"), **kwargs).collect_events())


# --- Protocol -----------------------------------------------------------------------------


def test_protocol_create_is_listed_under_its_slug_id() -> None:
    protocol = Protocol.create(
        "aave-v3", "Aave V3", category="Lending", chains=["ethereum"], url="https://aave.com"
    )

    assert protocol.id == Protocol.id_for("aave-v3") == Protocol.create_id("aave-v3")
    assert then(protocol) == [
        (
            "Listed",
            {
                "slug": "aave-v3",
                "name": "Aave V3",
                "category": "Lending",
                "chains": ["Ethereum"],
                "url": "https://aave.com",
                "observed_at": None,
                "oracles": [],
            },
        )
    ]
    assert protocol.version == 1
    assert protocol.current == {}
    assert (protocol.recent, protocol.horizon) == ({}, {})


def test_protocol_create_defaults() -> None:
    protocol = Protocol.create("uniswap", "Uniswap")
    assert then(protocol) == [
        (
            "Listed",
            {
                "slug": "uniswap",
                "name": "Uniswap",
                "category": "",
                "chains": [],
                "url": "",
                "observed_at": None,
                "oracles": [],
            },
        )
    ]


@pytest.mark.parametrize(
    "slug",
    ["a", "7", "aave-v3", "0x-protocol", "curve.fi", "ether.fi-stake", "a-", "a.b.c", "a" * 200],
)
def test_valid_slugs(slug: str) -> None:
    assert check_slug(slug) == slug
    assert Protocol.create(slug, "Name").slug == slug
    assert re.fullmatch(SLUG_PATTERN, slug)


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "Aave",
        "aaVe",
        "aave v3",
        "aave/v3",
        "aave?x",
        "aave#x",
        "aave%20",
        "-aave",
        ".aave",
        "aave\n",
        "aave\t",
        "a" * 201,
        5,
        None,
        ["aave"],
        # Outside DeFiLlama's alphabet: look-alikes, terminal escapes, log injection.
        "uniswap_v2",
        "aave\x07",
        "aave\x1b[31m",
        "aave\x00",
        "aave\u202ev3",
        "aa\u200bve",
        "aave\ufeff",
        "aave\U0001f680",
        "\u0430ave",  # Cyrillic a
        "a..b",
        "aave..",
        "aave'",
        'aave"',
        "aave+",
        "aave(v3)",
        "aave\\",
    ],
)
def test_invalid_slugs_are_refused(slug: Any) -> None:
    with pytest.raises(InvalidObservation, match="invalid protocol slug") as caught:
        check_slug(slug)
    assert caught.value.field == "protocol"
    with pytest.raises(InvalidObservation):
        Protocol.create(slug, "Name")
    if isinstance(slug, str):
        assert not re.fullmatch(SLUG_PATTERN, slug)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("  Aave  V3 ", "aave-v3"),
        ("ether.fi Stake", "ether.fi-stake"),
        ("JPEG'd", "jpegd"),
        ("Arbi's Finance", "arbis-finance"),
        ("GenesisLRT (Native Restaking)", "genesislrt-native-restaking"),
        ("Lorenzo sUSD1+", "lorenzo-susd1"),
        ("Synthetix v1+v2", "synthetix-v1-v2"),
        ("Yay!", "yay"),
        ("Curve.fi", "curve.fi"),
        ("a -- b", "a-b"),
        ("x...y.", "x.y"),
        ("-.Dots.-", "dots"),
        ("Tab\tNUL\x00RLO\u202eZWSP\u200bend", "tab-nul-rlo-zwsp-end"),
        ("Café Ξ 🚀", "caf"),
        ("!!!", ""),
    ],
)
def test_slugify_follows_defillama_into_the_slug_alphabet(name: str, slug: str) -> None:
    assert slugify(name) == slug
    if slug:
        assert check_slug(slugify(name)) == slug


# --- strings: control and invisible characters ------------------------------------------

CONTROL_CHARACTERS = ["\x00", "\x07", "\x1b", "\x1f", "\x7f", "\x80", "\x9f", "\ud800"]
INVISIBLE_CHARACTERS = ["\u200b", "\u200d", "\u200f", "\u202a", "\u202e", "\u2066", "\u2069"]
INVISIBLE_CHARACTERS += ["\ufeff", "\u00ad"]


@pytest.mark.parametrize("bad", CONTROL_CHARACTERS)
@pytest.mark.parametrize("identifier", [False, True])
def test_check_text_refuses_control_characters_naming_the_field(bad: str, identifier: bool) -> None:
    with pytest.raises(InvalidObservation, match=r"^name contains .*control character") as caught:
        check_text(f"x{bad}y", field="name", identifier=identifier)
    assert caught.value.field == "name"


@pytest.mark.parametrize("bad", INVISIBLE_CHARACTERS)
def test_invisible_characters_are_refused_in_identifiers_only(bad: str) -> None:
    assert check_text(f"x{bad}y", field="name") == f"x{bad}y"
    with pytest.raises(InvalidObservation, match="chain contains an invisible") as caught:
        check_text(f"x{bad}y", field="chain", identifier=True)
    assert caught.value.field == "chain"


@pytest.mark.parametrize("text", ["", "Aave V3", "Ξ Café 🚀", "日本語", "tab-free\u00a0nbsp"])
def test_ordinary_text_passes(text: str) -> None:
    assert check_text(text, field="name", identifier=True) == text


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("name", {"name": "x\x00y"}),
        ("category", {"category": "Lend\x00ing"}),
        ("url", {"url": "https://x.example/\x00"}),
        ("chains", {"chains": ["Ethereum", "Base\x00"]}),
        ("chains", {"chains": ["Ethereum", "Ba\u202ese"]}),
        ("category", {"category": 5}),
    ],
)
def test_protocol_listing_refuses_control_characters(field: str, changes: dict[str, Any]) -> None:
    details: dict[str, Any] = {"name": "Aave", **changes}
    with pytest.raises(InvalidObservation, match=field) as caught:
        Protocol.create("aave", **details)
    assert caught.value.field == field
    protocol = listed()
    with pytest.raises(InvalidObservation, match=field):
        protocol.update_details(**changes)
    assert then(protocol) == []


@pytest.mark.parametrize(
    ("field", "chain", "source"),
    [("chain", "Base\x00", "s"), ("chain", "Ba\u200bse", "s"), ("source", "Base", "s\x00")],
)
def test_record_metric_refuses_control_characters(field: str, chain: str, source: str) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation, match=field) as caught:
        protocol.record_metric("tvl", chain, 1.0, T0, source)
    assert caught.value.field == field
    assert then(protocol) == []


def test_chain_lists_are_bounded() -> None:
    assert len(check_chains([f"c{i}" for i in range(MAX_CHAINS)])) == MAX_CHAINS
    with pytest.raises(InvalidObservation, match=f"at most {MAX_CHAINS}") as caught:
        Protocol.create("aave", "Aave", chains=["Ethereum"] * 200_000)
    assert caught.value.field == "chains"
    with pytest.raises(InvalidObservation, match="chains"):
        listed().update_details(chains=[f"c{i}" for i in range(MAX_CHAINS + 1)])


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, None, 3])
def test_protocol_create_needs_a_name(name: Any) -> None:
    with pytest.raises(InvalidObservation, match="name"):
        Protocol.create("aave", name)


@pytest.mark.parametrize("chains", ["ethereum", [""], [1], [None]])
def test_protocol_create_refuses_bad_chains(chains: Any) -> None:
    with pytest.raises(InvalidObservation):
        Protocol.create("aave", "Aave", chains=chains)


def test_first_observation_is_recorded_and_current() -> None:
    protocol = listed()

    assert protocol.record_metric("tvl", "total", 1.5e9, T0, "llama") is True

    assert then(protocol) == [
        (
            "MetricRecorded",
            {
                "slug": "aave-v3",
                "metric": "tvl",
                "chain": "total",
                "value": 1.5e9,
                "observed_at": T0,
                "source": "llama",
            },
        )
    ]
    assert protocol.current == {("tvl", "total"): (1.5e9, T0)}
    assert protocol.recent == {("tvl", "total"): {T0: 1.5e9}}
    assert protocol.current_value() == 1.5e9
    assert protocol.current_value("volume_24h") is None
    assert protocol.version == 2


def test_integer_values_and_timestamps_are_recorded_as_floats() -> None:
    protocol = listed()
    protocol.record_metric("fees_24h", "total", 7, int(T0))
    [(_, data)] = then(protocol)
    assert data["value"] == 7.0
    assert isinstance(data["value"], float)
    assert isinstance(data["observed_at"], float)
    assert data["source"] == ""


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        -math.inf,
        -1.0,
        -1,
        -1e-300,
        True,
        False,
        "1",
        None,
        [1],
        10**400,
    ],
)
def test_values_must_be_finite_non_negative_numbers(value: Any) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation):
        protocol.record_metric("tvl", "total", value, T0)
    assert then(protocol) == []
    assert protocol.current == {}


def test_zero_is_a_valid_value() -> None:
    protocol = listed()
    assert protocol.record_metric("tvl", "total", 0, T0) is True
    assert protocol.current_value() == 0.0


@pytest.mark.parametrize(
    "observed_at",
    [
        T0 * 1000,  # milliseconds
        0,
        946_684_799,
        4_102_444_800,
        math.nan,
        math.inf,
        True,
        "2024-01-01T00:00:00Z",
        None,
        10**400,
    ],
)
def test_observation_time_must_be_plausible_unix_seconds(observed_at: Any) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation):
        protocol.record_metric("tvl", "total", 1.0, observed_at)
    assert then(protocol) == []


@pytest.mark.parametrize("observed_at", [946_684_800, 4_102_444_799.5])
def test_observation_time_bounds_are_inclusive_exclusive(observed_at: float) -> None:
    protocol = listed()
    assert protocol.record_metric("tvl", "total", 1.0, observed_at) is True


@pytest.mark.parametrize("metric", ["TVL", "price", "", None, ["tvl"], {"tvl": 1}])
def test_unknown_metrics_are_refused(metric: Any) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation, match="unknown metric"):
        protocol.record_metric(metric, "total", 1.0, T0)


@pytest.mark.parametrize("chain", ["", "  ", None, 1, "c" * 201])
def test_bad_chains_are_refused(chain: Any) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation, match="chain"):
        protocol.record_metric("tvl", chain, 1.0, T0)


def test_identical_repeated_observation_is_a_no_op() -> None:
    builder = Protocol.create("aave-v3", "Aave V3")
    builder.record_metric("tvl", "total", 10.0, T0)
    protocol = given(builder.collect_events())

    assert protocol.record_metric("tvl", "total", 10.0, T0, "another-source") is False
    assert protocol.record_metric("tvl", "total", 10, int(T0)) is False

    assert then(protocol) == []
    assert protocol.version == 2


def test_late_observation_is_history_but_not_current() -> None:
    builder = Protocol.create("aave-v3", "Aave V3")
    builder.record_metric("tvl", "total", 10.0, T0)
    protocol = given(builder.collect_events())

    assert protocol.record_metric("tvl", "total", 8.0, T0 - 3600) is True

    assert then(protocol) == [
        (
            "MetricRecorded",
            {
                "slug": "aave-v3",
                "metric": "tvl",
                "chain": "total",
                "value": 8.0,
                "observed_at": T0 - 3600,
                "source": "",
            },
        )
    ]
    assert protocol.current == {("tvl", "total"): (10.0, T0)}
    assert protocol.recent == {("tvl", "total"): {T0: 10.0, T0 - 3600: 8.0}}


def test_newer_observation_moves_the_current_value() -> None:
    builder = Protocol.create("aave-v3", "Aave V3")
    builder.record_metric("tvl", "total", 10.0, T0)
    protocol = given(builder.collect_events())

    assert protocol.record_metric("tvl", "total", 12.0, T0 + 60) is True
    assert [name for name, _ in then(protocol)] == ["MetricRecorded"]
    assert protocol.current_value() == 12.0
    assert protocol.current[("tvl", "total")] == (12.0, T0 + 60)


def test_same_timestamp_different_value_is_a_correction() -> None:
    builder = Protocol.create("aave-v3", "Aave V3")
    builder.record_metric("tvl", "total", 10.0, T0)
    builder.record_metric("tvl", "total", 11.0, T0 + 60)
    protocol = given(builder.collect_events())

    assert protocol.record_metric("tvl", "total", 11.5, T0 + 60) is True

    assert then(protocol) == [
        (
            "MetricRecorded",
            {
                "slug": "aave-v3",
                "metric": "tvl",
                "chain": "total",
                "value": 11.5,
                "observed_at": T0 + 60,
                "source": "",
            },
        )
    ]
    assert protocol.current_value() == 11.5
    assert protocol.recent[("tvl", "total")][T0 + 60] == 11.5


def test_correction_of_a_late_timestamp_leaves_current_alone() -> None:
    builder = Protocol.create("aave-v3", "Aave V3")
    builder.record_metric("tvl", "total", 10.0, T0)
    builder.record_metric("tvl", "total", 11.0, T0 + 60)
    protocol = given(builder.collect_events())

    assert protocol.record_metric("tvl", "total", 9.0, T0) is True
    assert len(then(protocol)) == 1
    assert protocol.current_value() == 11.0
    assert protocol.recent[("tvl", "total")][T0] == 9.0


def test_metrics_and_chains_are_tracked_separately() -> None:
    protocol = listed(chains=["ethereum"])

    assert protocol.record_metric("tvl", "arbitrum", 3.0, T0) is True
    assert protocol.record_metric("tvl", "ethereum", 4.0, T0) is True
    assert protocol.record_metric("volume_24h", "total", 5.0, T0) is True
    # Same key (metric, chain, time) as nothing else: not a duplicate of the tvl above.
    assert protocol.record_metric("fees_24h", "arbitrum", 3.0, T0) is True

    assert [name for name, _ in then(protocol)] == ["MetricRecorded"] * 4
    assert protocol.current == {
        ("tvl", "Arbitrum"): (3.0, T0),
        ("tvl", "Ethereum"): (4.0, T0),
        ("volume_24h", "total"): (5.0, T0),
        ("fees_24h", "Arbitrum"): (3.0, T0),
    }
    assert protocol.current_value("tvl", "Arbitrum") == 3.0
    # A chain seen in a metric joins the listing, once, in order of appearance.
    assert protocol.chains == ["Ethereum", "Arbitrum"]


def test_record_metric_builds_the_event_trigger_event_would() -> None:
    """record_metric builds its event without trigger_event (for speed): same class, same
    fields in the same order (so the same stored JSON), same effect on the aggregate."""
    fast, slow = listed(), listed()
    assert fast.record_metric("tvl", "Base", 1.5, T0, "llama") is True
    slow.trigger_event(
        Protocol.MetricRecorded,
        slug="aave-v3",
        metric="tvl",
        chain="Base",
        value=1.5,
        observed_at=T0,
        source="llama",
    )
    [built], [triggered] = fast.collect_events(), slow.collect_events()
    assert type(built) is type(triggered) is Protocol.MetricRecorded
    assert list(vars(built)) == list(vars(triggered))
    assert {k: v for k, v in vars(built).items() if k != "timestamp"} == {
        k: v for k, v in vars(triggered).items() if k != "timestamp"
    }
    assert built.timestamp.tzinfo is not None
    transcoder = JSONTranscoder()
    transcoder.register(DatetimeAsISO())
    transcoder.register(UUIDAsHex())
    stored = [Mapper(transcoder).to_stored_event(e) for e in (built, triggered)]
    assert stored[0].state.split(b'"slug"')[1] == stored[1].state.split(b'"slug"')[1]
    assert (fast.version, fast.modified_on, fast.current) == (2, built.timestamp, slow.current)
    listing = Protocol.create("aave-v3", "Aave V3").collect_events()
    assert given([*listing, built]).recent == fast.recent


def test_update_details_records_the_full_listing() -> None:
    protocol = listed(category="Lending", chains=["ethereum"], url="https://aave.com")

    assert protocol.update_details(category="Dexes", chains=["ethereum", "base"]) is True

    assert then(protocol) == [
        (
            "DetailsUpdated",
            {
                "slug": "aave-v3",
                "name": "Aave V3",
                "category": "Dexes",
                "chains": ["Ethereum", "Base"],
                "url": "https://aave.com",
                "observed_at": None,
                "oracles": [],
            },
        )
    ]
    assert (protocol.name, protocol.category, protocol.chains, protocol.url) == (
        "Aave V3",
        "Dexes",
        ["Ethereum", "Base"],
        "https://aave.com",
    )


def test_details_observed_before_the_current_ones_change_nothing() -> None:
    protocol = given(
        Protocol.create("aave", "Aave", "Lending", ["Ethereum"], observed_at=T0).collect_events()
    )
    assert protocol.details_observed_at == T0
    # Older details (an earlier snapshot, a re-import): the current ones stay.
    assert protocol.update_details(name="Aave (old)", chains=["Base"], observed_at=T0 - 1) is False
    assert then(protocol) == []
    # Same time or newer: they apply, and become the current time.
    assert protocol.update_details(category="Dexes", observed_at=T0) is True
    assert protocol.update_details(name="Aave V3", observed_at=T0 + 60) is True
    assert [(name, fact["observed_at"]) for name, fact in then(protocol)] == [
        ("DetailsUpdated", T0),
        ("DetailsUpdated", T0 + 60),
    ]
    assert (protocol.name, protocol.category, protocol.details_observed_at) == (
        "Aave V3",
        "Dexes",
        T0 + 60,
    )
    # Without a time they apply as given and keep the current time.
    assert protocol.update_details(url="https://aave.com") is True
    assert protocol.details_observed_at == T0 + 60
    assert protocol.update_details(url="https://old.example", observed_at=T0) is False
    with pytest.raises(InvalidObservation, match="observed_at"):
        protocol.update_details(name="x", observed_at=T0 * 1000)


def test_listing_events_stored_without_a_time_still_replay() -> None:
    # Listed and DetailsUpdated events recorded before they carried observed_at.
    created = Protocol.create("aave", "Aave")
    listed_event = created.collect_events()[0]
    created.update_details(name="Aave V3")
    updated_event = created.collect_events()[0]
    old = []
    for new in (listed_event, updated_event):
        event = object.__new__(type(new))
        event.__dict__.update({k: v for k, v in vars(new).items() if k != "observed_at"})
        old.append(event)
    protocol = given(old)
    assert (protocol.name, protocol.details_observed_at) == ("Aave V3", None)
    assert protocol.update_details(name="Aave V4", observed_at=T0) is True


def test_update_details_without_change_is_a_no_op() -> None:
    protocol = listed(category="Lending", chains=["ethereum"])

    assert protocol.update_details() is False
    assert protocol.update_details(name="Aave V3", category="Lending", chains=["ethereum"]) is False
    assert then(protocol) == []


@pytest.mark.parametrize(
    "changes",
    [{"name": ""}, {"name": 5}, {"chains": "ethereum"}, {"chains": [""]}, {"url": 7}],
)
def test_update_details_validates(changes: dict[str, Any]) -> None:
    protocol = listed()
    with pytest.raises(InvalidObservation):
        protocol.update_details(**changes)
    assert then(protocol) == []


# --- Token --------------------------------------------------------------------------------


def registered(token_id: str = "coingecko:ethereum") -> Token:
    return given(Token.register(token_id).collect_events())


@pytest.mark.parametrize(
    "token_id",
    [
        "coingecko:ethereum",
        "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
        "solana:EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
        "bsc:wbnb.token_x-1",
    ],
)
def test_register_token(token_id: str) -> None:
    token = Token.register(token_id)
    assert token.id == Token.id_for(token_id) == Token.create_id(token_id)
    # Registered under the canonical spelling (an EVM address in lower case).
    assert then(token) == [("Registered", {"token_id": canonical_token_id(token_id)})]
    assert (token.price, token.observed_at, token.confidence, token.recent) == (
        None,
        None,
        None,
        {},
    )


@pytest.mark.parametrize(
    "token_id",
    [
        "",
        "ethereum",
        ":0xabc",
        "ethereum:",
        "Ethereum:0xabc",
        "coingecko:eth er",
        "coingecko:eth\n",
        "coingecko:a:b",
        "c" * 41 + ":x",
        "coingecko:" + "x" * 129,
        None,
        42,
        "coingecko:eth\x00",
        "coingecko:eth\u202e",
        "coingecko:e\u200bth",
        "coingecko:éth",
        "ethereum:0xabc/..",
    ],
)
def test_invalid_token_ids_are_refused(token_id: Any) -> None:
    with pytest.raises(InvalidObservation, match="invalid token id") as caught:
        check_token_id(token_id)
    assert caught.value.field == "token"
    with pytest.raises(InvalidObservation):
        Token.register(token_id)


def test_first_price_is_recorded() -> None:
    token = registered()

    assert token.record_price(3100.5, T0, 0.99, "llama") is True

    assert then(token) == [
        (
            "PriceRecorded",
            {
                "token_id": "coingecko:ethereum",
                "price": 3100.5,
                "observed_at": T0,
                "confidence": 0.99,
                "source": "llama",
            },
        )
    ]
    assert (token.price, token.observed_at, token.confidence) == (3100.5, T0, 0.99)
    assert token.recent == {T0: 3100.5}


@pytest.mark.parametrize("confidence", [0, 0.0, 0.5, 1, 1.0, None])
def test_confidence_within_bounds(confidence: Any) -> None:
    token = registered()
    assert token.record_price(1.0, T0, confidence) is True
    [(_, data)] = then(token)
    assert data["confidence"] == confidence
    assert token.confidence == confidence


@pytest.mark.parametrize("confidence", [1.0000001, 2, -0.1, math.nan, math.inf, True, "0.5"])
def test_confidence_out_of_bounds_is_refused(confidence: Any) -> None:
    token = registered()
    with pytest.raises(InvalidObservation, match="confidence"):
        token.record_price(1.0, T0, confidence)
    assert then(token) == []


@pytest.mark.parametrize("price", [math.nan, math.inf, -0.01, True, "3100", None])
def test_price_must_be_a_finite_non_negative_number(price: Any) -> None:
    token = registered()
    with pytest.raises(InvalidObservation, match="price"):
        token.record_price(price, T0)
    assert then(token) == []


def test_identical_repeated_price_is_a_no_op() -> None:
    builder = Token.register("coingecko:ethereum")
    builder.record_price(3000.0, T0, 0.9)
    token = given(builder.collect_events())

    assert token.record_price(3000.0, T0, 0.9) is False
    assert then(token) == []
    assert token.version == 2


def test_late_price_is_history_only() -> None:
    builder = Token.register("coingecko:ethereum")
    builder.record_price(3000.0, T0, 0.9)
    token = given(builder.collect_events())

    assert token.record_price(2900.0, T0 - 60, 0.5) is True

    assert then(token) == [
        (
            "PriceRecorded",
            {
                "token_id": "coingecko:ethereum",
                "price": 2900.0,
                "observed_at": T0 - 60,
                "confidence": 0.5,
                "source": "",
            },
        )
    ]
    assert (token.price, token.observed_at, token.confidence) == (3000.0, T0, 0.9)
    assert token.recent == {T0: 3000.0, T0 - 60: 2900.0}


def test_same_timestamp_new_price_is_a_correction() -> None:
    builder = Token.register("coingecko:ethereum")
    builder.record_price(3000.0, T0, 0.9)
    token = given(builder.collect_events())

    assert token.record_price(3001.0, T0, None) is True
    assert [name for name, _ in then(token)] == ["PriceRecorded"]
    assert (token.price, token.observed_at, token.confidence) == (3001.0, T0, None)


# --- AlertRule ----------------------------------------------------------------------------

TVL_TARGET = {"protocol": "aave-v3"}
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1_000_000_000}
WEBHOOK = [{"kind": "webhook", "url": "https://example.com/hook"}]


def rule_events(**kwargs: Any) -> list[Any]:
    arguments: dict[str, Any] = {
        "owner": "alice",
        "target": TVL_TARGET,
        "condition": BELOW_1B,
        "channels": WEBHOOK,
        "cooldown": 600,
        "name": "drain",
    }
    arguments.update(kwargs)
    return list(AlertRule.create(**arguments).collect_events())


def test_create_alert_rule_normalises_its_parts() -> None:
    rule = AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=600, name="drain")

    assert then(rule) == [
        (
            "Created",
            {
                "owner": "alice",
                "name": "drain",
                "target": {"protocol": "aave-v3", "metric": "tvl", "chain": "total"},
                "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
                "channels": [{"kind": "webhook", "url": "https://example.com/hook"}],
                "cooldown": 600,
            },
        )
    ]
    assert (rule.state, rule.firing, rule.last_fired_at, rule.transitions) == (
        "active",
        "resolved",
        None,
        0,
    )
    assert isinstance(rule.condition.value, float)


def test_create_alert_rule_defaults() -> None:
    rule = AlertRule.create(
        "bob",
        {"token": "coingecko:ethereum"},
        {"kind": "pct_change", "direction": "below", "value": -10, "window": "1h"},
        [{"kind": "email", "address": "bob@example.com"}, {"kind": "websocket"}],
    )
    [(name, data)] = then(rule)
    assert name == "Created"
    assert data == {
        "owner": "bob",
        "name": "",
        "target": {"token": "coingecko:ethereum", "metric": "price"},
        "condition": {"kind": "pct_change", "direction": "below", "value": -10.0, "window": "1h"},
        "channels": [{"kind": "email", "address": "bob@example.com"}, {"kind": "websocket"}],
        "cooldown": 3600,
    }


@pytest.mark.parametrize(
    ("target", "normalised"),
    [
        (
            {"protocol": "uniswap", "metric": "volume_24h", "chain": "arbitrum"},
            {"protocol": "uniswap", "metric": "volume_24h", "chain": "Arbitrum"},
        ),
        (
            {"protocol": "uniswap", "chain": None},
            {"protocol": "uniswap", "metric": "tvl", "chain": "total"},
        ),
        (
            {"token": "coingecko:bitcoin", "metric": "price"},
            {"token": "coingecko:bitcoin", "metric": "price"},
        ),
    ],
)
def test_alert_targets(target: dict[str, Any], normalised: dict[str, Any]) -> None:
    rule = AlertRule.create("alice", target, BELOW_1B, WEBHOOK)
    assert rule.target.model_dump() == normalised


@pytest.mark.parametrize(
    "target",
    [
        {},
        {"protocol": "aave", "token": "coingecko:ethereum"},
        {"protocol": "Aave"},
        {"protocol": "aave", "metric": "price"},
        {"protocol": "aave", "metric": ["tvl"]},
        {"protocol": "aave", "chain": 5},
        {"token": "ethereum"},
        {"token": "coingecko:ethereum", "metric": "tvl"},
        "aave",
        None,
    ],
)
def test_invalid_alert_targets(target: Any) -> None:
    with pytest.raises(DomainError):
        AlertRule.create("alice", target, BELOW_1B, WEBHOOK)


@pytest.mark.parametrize(
    "condition",
    [
        {"kind": "threshold", "direction": "above", "value": -1},
        {"kind": "threshold", "direction": "sideways", "value": 1},
        {"kind": "threshold", "value": 1},
        {"kind": "threshold", "direction": "above", "value": math.nan},
        {"kind": "threshold", "direction": "above", "value": math.inf},
        {"kind": "threshold", "direction": "above", "value": True},
        {"kind": "threshold", "direction": "above", "value": "1"},
        {"kind": "threshold", "direction": "above"},
        {"kind": "threshold", "direction": "above", "value": 10**400},
        {"kind": "pct_change", "direction": "below", "value": -10},
        {"kind": "pct_change", "direction": "below", "value": -10, "window": "2h"},
        {"kind": "pct_change", "direction": "below", "value": -10, "window": ["1h"]},
        {"kind": "pct_change", "direction": "below", "value": -101, "window": "1h"},
        {"kind": "ratio", "direction": "below", "value": 1},
        {"direction": "below", "value": 1},
        [],
        None,
    ],
)
def test_invalid_alert_conditions(condition: Any) -> None:
    with pytest.raises(InvalidRule):
        AlertRule.create("alice", TVL_TARGET, condition, WEBHOOK)


@pytest.mark.parametrize(
    "channels",
    [
        [],
        None,
        {"kind": "webhook", "url": "https://x"},
        [{"kind": "sms"}],
        [{"kind": ["webhook"]}],
        [{"url": "https://x"}],
        ["webhook"],
        [{"kind": "webhook", "url": "ftp://x"}],
        [{"kind": "webhook"}],
        [{"kind": "email", "address": "nobody"}],
        [{"kind": "websocket"}, {"kind": "email"}],
    ],
)
def test_invalid_alert_channels(channels: Any) -> None:
    with pytest.raises(InvalidRule, match="channels"):
        AlertRule.create("alice", TVL_TARGET, BELOW_1B, channels)


@pytest.mark.parametrize("cooldown", [-1, MAX_COOLDOWN + 1, 1.5, True, "60", None])
def test_invalid_alert_cooldowns(cooldown: Any) -> None:
    with pytest.raises(InvalidRule, match="cooldown"):
        AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=cooldown)


@pytest.mark.parametrize("cooldown", [0, MAX_COOLDOWN])
def test_alert_cooldown_bounds(cooldown: int) -> None:
    assert AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown).cooldown == cooldown


@pytest.mark.parametrize("owner", ["", " ", None, 7])
def test_alert_rule_needs_an_owner(owner: Any) -> None:
    with pytest.raises(DomainError, match="owner"):
        AlertRule.create(owner, TVL_TARGET, BELOW_1B, WEBHOOK)


def test_pause_active_rule() -> None:
    rule = given(rule_events())
    rule.pause()
    assert then(rule) == [("Paused", {})]
    assert rule.state == "paused"


def test_resume_paused_rule() -> None:
    rule = given(_history(pause=True))
    rule.resume()
    assert then(rule) == [("Resumed", {})]
    assert rule.state == "active"


def _history(*, pause: bool = False, delete: bool = False) -> list[Any]:
    builder = AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=600)
    if pause:
        builder.pause()
    if delete:
        builder.delete()
    return list(builder.collect_events())


@pytest.mark.parametrize("pause", [False, True])
def test_delete_active_or_paused_rule(pause: bool) -> None:
    rule = given(_history(pause=pause))
    rule.delete()
    assert then(rule) == [("Deleted", {})]
    assert rule.state == "deleted"


@pytest.mark.parametrize(
    ("history", "command"),
    [
        ({}, "resume"),
        ({"pause": True}, "pause"),
        ({"delete": True}, "pause"),
        ({"delete": True}, "resume"),
        ({"delete": True}, "delete"),
        ({"pause": True, "delete": True}, "resume"),
    ],
)
def test_invalid_lifecycle_transitions(history: dict[str, bool], command: str) -> None:
    rule = given(_history(**history))
    state = rule.state
    with pytest.raises(InvalidTransition):
        getattr(rule, command)()
    assert then(rule) == []
    assert rule.state == state


def test_update_deleted_rule_is_refused() -> None:
    rule = given(_history(delete=True))
    with pytest.raises(InvalidTransition, match="deleted"):
        rule.update(cooldown=1)
    assert then(rule) == []


def test_update_rule_records_the_whole_new_configuration() -> None:
    rule = given(rule_events())
    rule.update(condition={"kind": "threshold", "direction": "above", "value": 5}, cooldown=60)
    assert then(rule) == [
        (
            "Updated",
            {
                "condition": {"kind": "threshold", "direction": "above", "value": 5.0},
                "channels": [{"kind": "webhook", "url": "https://example.com/hook"}],
                "cooldown": 60,
                "name": "drain",
                # Whose the name and channels are (sealed with the owner's key, ADR 0042).
                "owner": "alice",
            },
        )
    ]
    assert rule.cooldown == 60
    assert rule.condition.direction == "above"


def test_update_rule_validates() -> None:
    rule = given(rule_events())
    with pytest.raises(InvalidRule):
        rule.update(channels=[])
    with pytest.raises(InvalidRule):
        rule.update(cooldown=-5)
    assert then(rule) == []


@pytest.mark.parametrize("name", ["x\x00y", "bell\x07", "esc\x1b[2J", "c1\x85", 7, "n" * 201])
def test_rule_name_is_text_without_control_characters(name: Any) -> None:
    with pytest.raises(InvalidRule, match="name") as caught:
        AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, name=name)
    assert caught.value.field == "name"
    rule = given(rule_events())
    with pytest.raises(InvalidRule, match="name") as caught:
        rule.update(name=name)
    assert caught.value.field == "name"
    assert then(rule) == []


@pytest.mark.parametrize(
    "target",
    [
        {"protocol": "Bad Slug"},
        {"protocol": "aave\u202e"},
        {"protocol": "aave", "chain": "Base\x00"},
        {"protocol": "aave", "chain": "Ba\u200bse"},
        {"token": "coingecko:eth\x00"},
    ],
)
def test_a_malformed_target_is_an_invalid_rule(target: dict[str, Any]) -> None:
    # Not an InvalidObservation: the API turns InvalidRule into a 400 (it was a 500).
    with pytest.raises(InvalidRule, match="target") as caught:
        parse_target(target)
    assert caught.value.field == "target"


@pytest.mark.parametrize("key", ["url", "address", "secret"])
def test_channels_refuse_control_characters(key: str) -> None:
    channel = (
        {"kind": "email", "address": "a@b.c"}
        if key == "address"
        else {"kind": "webhook", "url": "https://x.example/h", "secret": "s"}
    )
    channel[key] += "\r\nX-Injected: 1"
    with pytest.raises(InvalidRule, match=rf"channels\[0\]\.{key} contains .*control") as caught:
        AlertRule.create("alice", TVL_TARGET, BELOW_1B, [channel])
    assert caught.value.field == "channels"


def test_rule_fires_when_condition_becomes_true() -> None:
    rule = given(rule_events())

    assert rule.observe(2e9, T0) is None
    assert then(rule) == []
    assert rule.observe(9e8, T0 + 60) == "firing"

    assert then(rule) == [
        (
            "Triggered",
            {
                "owner": "alice",
                "measure": 9e8,
                "observed_at": T0 + 60,
                "idempotency_key": f"{rule.id}:1",
                "position": None,
                "channel_kinds": ["webhook"],
            },
        )
    ]
    assert (rule.firing, rule.last_fired_at, rule.transitions) == ("firing", T0 + 60, 1)


def test_threshold_is_inclusive() -> None:
    rule = given(rule_events())
    assert rule.observe(1e9, T0) == "firing"


def test_firing_rule_stays_quiet_while_condition_holds_then_resolves() -> None:
    builder = AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=600)
    builder.observe(5e8, T0)
    rule = given(builder.collect_events())

    assert rule.observe(4e8, T0 + 60) is None
    assert then(rule) == []
    assert rule.observe(1.5e9, T0 + 120) == "resolved"
    assert then(rule) == [
        (
            "Resolved",
            {
                "owner": "alice",
                "measure": 1.5e9,
                "observed_at": T0 + 120,
                "idempotency_key": f"{rule.id}:2",
                "position": None,
                "channel_kinds": ["webhook"],
            },
        )
    ]
    assert (rule.firing, rule.last_fired_at, rule.transitions) == ("resolved", T0, 2)


def test_cooldown_is_measured_in_data_time() -> None:
    builder = AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=600)
    builder.observe(5e8, T0)  # fires
    builder.observe(2e9, T0 + 60)  # resolves
    rule = given(builder.collect_events())

    # Within the cooldown of the last firing: no new notification, state stays resolved.
    assert rule.observe(5e8, T0 + 599) is None
    assert then(rule) == []
    assert rule.firing == "resolved"
    # Exactly at the end of the cooldown it may fire again, with the next key.
    assert rule.observe(5e8, T0 + 600) == "firing"
    assert then(rule) == [
        (
            "Triggered",
            {
                "owner": "alice",
                "measure": 5e8,
                "observed_at": T0 + 600,
                "idempotency_key": f"{rule.id}:3",
                "position": None,
                "channel_kinds": ["webhook"],
            },
        )
    ]


def test_idempotency_keys_are_unique_per_transition() -> None:
    rule = given(rule_events(cooldown=0))
    transitions = [rule.observe(m, T0 + i) for i, m in enumerate([1, 2e9, 1, 2e9, 1])]
    assert transitions == ["firing", "resolved", "firing", "resolved", "firing"]
    keys = [data["idempotency_key"] for _, data in then(rule)]
    assert keys == [f"{rule.id}:{n}" for n in range(1, 6)]


@pytest.mark.parametrize("history", [{"pause": True}, {"delete": True}])
def test_inactive_rule_does_not_fire(history: dict[str, bool]) -> None:
    rule = given(_history(**history))
    assert rule.observe(1.0, T0) is None
    assert then(rule) == []


def test_non_finite_measure_is_ignored() -> None:
    rule = given(rule_events())
    assert rule.observe(math.nan, T0) is None
    assert then(rule) == []


def test_pct_change_rule_fires_on_a_drop() -> None:
    rule = given(
        rule_events(
            condition={"kind": "pct_change", "direction": "below", "value": -10, "window": "1h"}
        )
    )
    assert rule.observe(-5.0, T0) is None
    assert rule.observe(-10.0, T0 + 1) == "firing"
    assert [name for name, _ in then(rule)] == ["Triggered"]


def test_resumed_rule_keeps_its_firing_state() -> None:
    builder = AlertRule.create("alice", TVL_TARGET, BELOW_1B, WEBHOOK, cooldown=0)
    builder.observe(1.0, T0)
    builder.pause()
    builder.resume()
    rule = given(builder.collect_events())
    assert (rule.state, rule.firing) == ("active", "firing")
    assert rule.observe(2e9, T0 + 1) == "resolved"
    assert [name for name, _ in then(rule)] == ["Resolved"]


# --- Subscription -------------------------------------------------------------------------


def opened(**kwargs: Any) -> Subscription:
    arguments: dict[str, Any] = {"owner": "alice", "channel": "protocols"}
    arguments.update(kwargs)
    return given(Subscription.open(**arguments).collect_events())


def test_open_subscription() -> None:
    subscription = Subscription.open(
        "alice",
        "prices",
        {"tokenIds": ["coingecko:ethereum"]},
        delivery="webhook",
        webhook={"url": "https://hooks.example.org/feed"},
    )
    assert then(subscription) == [
        (
            "Opened",
            {
                "owner": "alice",
                "channel": "prices",
                "params": {"tokenIds": ["coingecko:ethereum"]},
                "delivery": "webhook",
                "name": "",
                "position": 0,
                "webhook": {"url": "https://hooks.example.org/feed"},
            },
        )
    ]
    assert (subscription.position, subscription.closed) == (0, False)


def test_open_subscription_defaults() -> None:
    subscription = Subscription.open("alice", "alerts")
    assert then(subscription) == [
        (
            "Opened",
            {
                "owner": "alice",
                "channel": "alerts",
                "params": {},
                "delivery": "websocket",
                "name": "",
                "position": 0,
                "webhook": None,
            },
        )
    ]


@pytest.mark.parametrize("channel", ["tvl", "", None, ["prices"], "Prices"])
def test_open_subscription_refuses_unknown_channels(channel: Any) -> None:
    with pytest.raises(InvalidSubscription, match="unknown channel"):
        Subscription.open("alice", channel)


def test_open_subscription_needs_an_owner() -> None:
    with pytest.raises(InvalidObservation, match="owner"):
        Subscription.open("", "prices")


def test_advance_subscription() -> None:
    subscription = opened()
    assert subscription.advance(42) is True
    assert then(subscription) == [("Advanced", {"position": 42})]
    assert subscription.position == 42


@pytest.mark.parametrize("position", [0, 41, 42])
def test_advance_never_goes_back(position: int) -> None:
    builder = Subscription.open("alice", "protocols")
    builder.advance(42)
    subscription = given(builder.collect_events())
    assert subscription.advance(position) is False
    assert then(subscription) == []
    assert subscription.position == 42


def test_close_subscription() -> None:
    subscription = opened()
    subscription.close()
    assert then(subscription) == [("Closed", {})]
    assert subscription.closed is True


def test_closed_subscription_refuses_commands() -> None:
    builder = Subscription.open("alice", "protocols")
    builder.close()
    subscription = given(builder.collect_events())
    with pytest.raises(InvalidTransition, match="closed"):
        subscription.advance(10)
    with pytest.raises(InvalidTransition, match="already closed"):
        subscription.close()
    assert then(subscription) == []


def test_a_subscription_starts_where_it_is_told() -> None:
    subscription = Subscription.open("alice", "prices", name="eth", position=42)
    assert (subscription.name, subscription.position) == ("eth", 42)
    for position in (-1, True, 1.5):
        with pytest.raises(InvalidSubscription, match="position"):
            Subscription.open("alice", "prices", position=position)  # type: ignore[arg-type]


def test_subscription_book_names_are_unique_and_places_bounded() -> None:
    builder = SubscriptionBook.open("alice")
    builder.admit("s1", "eth", limit=2)
    book = given(builder.collect_events())
    assert book.id == SubscriptionBook.id_for("alice")
    with pytest.raises(SubscriptionNameTaken) as taken:
        book.admit("s2", "eth", limit=2)
    assert (taken.value.existing, taken.value.field) == ("s1", "name")
    book.admit("s2", "", limit=2)  # unnamed ones never clash
    with pytest.raises(SubscriptionQuotaExceeded):
        book.admit("s3", "", limit=2)
    assert then(book) == [("Admitted", {"subscription_id": "s2", "name": "", "owner": "alice"})]


def test_subscription_book_release_frees_the_name_once() -> None:
    builder = SubscriptionBook.open("alice")
    builder.admit("s1", "eth", limit=5)
    book = given(builder.collect_events())
    assert book.release("s1") is True
    assert book.release("s1") is False  # nothing more to release: no event
    book.admit("s2", "eth", limit=5)
    assert then(book) == [
        ("Released", {"subscription_id": "s1"}),
        ("Admitted", {"subscription_id": "s2", "name": "eth", "owner": "alice"}),
    ]


# --- ApiKey -------------------------------------------------------------------------------

SECRET = "drt_" + "s3cr3t" * 8
ACCOUNT = Account.open("acme")


def test_issue_key_keeps_only_the_hash() -> None:
    key = ApiKey.issue(SECRET, account=ACCOUNT, name="dashboard", tier="pro")

    expected_hash = hashlib.sha256(SECRET.encode()).hexdigest()
    assert hash_key(SECRET) == expected_hash
    assert key.id == ApiKey.id_for(expected_hash) == ApiKey.create_id(expected_hash)
    events = key.collect_events()
    assert facts(events) == [
        (
            "Issued",
            {
                "key_hash": expected_hash,
                "name": "dashboard",
                "owner": str(ACCOUNT.id),
                "tier": "pro",
                "account_id": str(ACCOUNT.id),
                "allowed_ips": [],
            },
        )
    ]
    # The secret itself is nowhere: not in the event, not in the aggregate.
    assert SECRET not in repr(vars(events[0]))
    assert SECRET not in repr(vars(key))
    assert key.revoked is False


def test_issue_key_owner_is_its_account_never_its_name() -> None:
    key = ApiKey.issue(SECRET, account=ACCOUNT, name="bot")
    [(_, data)] = then(key)
    assert (data["owner"], data["account_id"], data["tier"]) == (
        str(ACCOUNT.id),
        str(ACCOUNT.id),
        "free",
    )


@pytest.mark.parametrize(
    ("tier", "limits"),
    [
        ("free", TierLimits(60, 2, 10, 5)),
        ("basic", TierLimits(600, 10, 50, 50)),
        ("pro", TierLimits(6_000, 100, 200, 500)),
        ("enterprise", TierLimits(60_000, 1_000, 1_000, 10_000)),
    ],
)
def test_tiers_and_their_limits(tier: str, limits: TierLimits) -> None:
    key = given(ApiKey.issue(SECRET, account=ACCOUNT, name="x", tier=tier).collect_events())
    assert key.tier == tier
    assert key.limits == limits == TIER_LIMITS[tier]


@pytest.mark.parametrize("tier", ["gold", "Free", "", None])
def test_unknown_tier_is_refused(tier: Any) -> None:
    with pytest.raises(InvalidTier, match="unknown tier"):
        ApiKey.issue(SECRET, account=ACCOUNT, name="x", tier=tier)


@pytest.mark.parametrize("name", ["", "  ", None])
def test_key_needs_a_name(name: Any) -> None:
    with pytest.raises(DomainError, match="name"):
        ApiKey.issue(SECRET, account=ACCOUNT, name=name)


def test_revoke_key() -> None:
    key = given(ApiKey.issue(SECRET, account=ACCOUNT, name="x").collect_events())
    key.revoke()
    assert then(key) == [("Revoked", {})]
    assert key.revoked is True


def test_revoke_twice_fails() -> None:
    builder = ApiKey.issue(SECRET, account=ACCOUNT, name="x")
    builder.revoke()
    key = given(builder.collect_events())
    with pytest.raises(InvalidTransition, match="already revoked"):
        key.revoke()
    assert then(key) == []


def test_different_secrets_make_different_keys() -> None:
    assert (
        ApiKey.issue("a", name="x", account=ACCOUNT).id
        != ApiKey.issue("b", name="x", account=ACCOUNT).id
    )
    assert (
        ApiKey.issue("a", name="x", account=ACCOUNT).id
        == ApiKey.issue("a", name="y", account=ACCOUNT).id
    )


def test_a_rules_target_cannot_change() -> None:
    rule = given(rule_events())
    with pytest.raises(InvalidRule, match="target cannot change") as refused:
        rule.update(target={"protocol": "lido"})
    assert refused.value.field == "target"
    # The same target, spelled with its defaults, is no change at all.
    assert rule.update(target={"protocol": "aave-v3", "metric": "tvl", "chain": "total"}) is False
    assert then(rule) == []


def test_a_rule_book_admits_up_to_its_limit_and_frees_a_place_on_release() -> None:
    book = RuleBook.open("alice", existing=["r1"])
    book.admit("r2", limit=3)
    book.admit("r3", limit=3)
    with pytest.raises(RuleQuotaExceeded) as refused:
        book.admit("r4", limit=3)
    assert refused.value.limit == 3
    book.release("r1")
    book.release("r1")  # not in the book any more: nothing recorded
    book.admit("r4", limit=3)
    assert book.rules == {"r2", "r3", "r4"}
    assert [type(event).__name__ for event in book.collect_events()] == [
        "Opened",
        "Admitted",
        "Admitted",
        "Released",
        "Admitted",
    ]


def _accepts(check: Any, value: Any) -> bool:
    try:
        check(value)
    except DomainError:
        return False
    return True


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([True, False, None, "1", -0.0, 946_684_800, 4_102_444_800, 10**309]),
)
_STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", " ", "\u00a0", "x" * 200, "x" * 201, "a\x00", "a\u200b", "Eth"]),
    st.sampled_from([None, 5, ["a"]]),
)


@hypothesis.given(value=_VALUES)
def test_value_and_time_predicates_agree_with_the_checks(value: Any) -> None:
    assert is_value(value) == _accepts(check_value, value)
    assert is_timestamp(value) == _accepts(check_timestamp, value)


@hypothesis.given(text=_STRINGS, identifier=st.booleans())
def test_string_predicates_agree_with_the_checks(text: Any, identifier: bool) -> None:
    assert is_text(text, identifier=identifier) == _accepts(
        lambda t: check_text(t, field="f", identifier=identifier), text
    )
    assert is_label(text, identifier=identifier) == _accepts(
        lambda t: check_label(t, what="f", identifier=identifier), text
    )
    assert is_slug(text) == _accepts(check_slug, text)
    chains = [text, "Ethereum"]
    assert is_chain_list(chains) == _accepts(check_chains, chains)


def test_moving_a_series_horizon_keeps_an_untracked_dict_untracked() -> None:
    """The horizons (series -> time, atoms only) are untracked by a full collection; moving
    one must not make the collector track the dict again (a fresh key tuple did), or every
    full collection scans it once per protocol observed since the last (ADR 0057)."""
    protocol = listed()
    for n in range(RECENT_PER_SERIES + 2):  # past the window: the horizon moves
        protocol.record_metric("tvl", "total", 1.0 + n, T0 + n)
    gc.collect()
    gc.collect()  # young collections untrack the tuples, a full one the dict
    assert not gc.is_tracked(protocol.horizon)
    before = protocol.horizon[("tvl", "total")]
    protocol.record_metric("tvl", "total", 9.0, T0 + 100)
    assert protocol.horizon[("tvl", "total")] > before
    assert not gc.is_tracked(protocol.horizon)
