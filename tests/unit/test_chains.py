"""Chain names: one canonical spelling per chain, wherever a name enters or is read back."""

from __future__ import annotations

import pytest

from defi_realtime.adapters.event_store_log import to_entry
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch, parse_observation
from defi_realtime.domain.chains import canonical_chain, chain_info, chain_key, known_chains
from defi_realtime.domain.protocol import Protocol

T0 = 1_700_000_000.0


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Ethereum", "Ethereum"),
        ("ethereum ", "Ethereum"),
        ("  ETHEREUM", "Ethereum"),
        ("solana", "Solana"),
        ("Binance", "BSC"),
        ("bsc", "BSC"),
        ("Optimism", "OP Mainnet"),
        ("op   mainnet", "OP Mainnet"),
        ("xDai", "Gnosis"),
        ("Klaytn", "Kaia"),
        ("zkSync Era", "ZKsync Era"),
        ("Hyperliquid", "Hyperliquid L1"),
        # Not in the registry: kept as written, whitespace tidied.
        (" Some  New Chain ", "Some New Chain"),
        ("total", "total"),
    ],
)
def test_canonical_names(spelling: str, canonical: str) -> None:
    assert canonical_chain(spelling) == canonical
    assert chain_key(spelling) == canonical.casefold()


def test_the_registry_holds_defillamas_names_and_facts() -> None:
    names = [info.name for info in known_chains()]
    assert len(names) == len(set(names)) >= 400
    assert names[:3] == ["Ethereum", "BSC", "Arbitrum"]
    bsc = chain_info("binance")
    assert bsc is not None
    assert (bsc.name, bsc.token_symbol, bsc.gecko_id, bsc.chain_id) == (
        "BSC",
        "BNB",
        "binancecoin",
        56,
    )
    assert chain_info("no such chain") is None
    # No alias names another listed chain: every spelling resolves to one chain only.
    spellings = [s.casefold() for info in known_chains() for s in (info.name, *info.aliases)]
    assert len(spellings) == len(set(spellings))


def test_a_protocol_keeps_one_name_per_chain() -> None:
    protocol = Protocol.create("aave", "Aave", chains=["ethereum", "Ethereum ", "Binance", "BSC"])
    assert protocol.chains == ["Ethereum", "BSC"]
    assert protocol.record_metric("tvl", "Ethereum ", 1.0, T0) is True
    # The same observation under another spelling is a repeat, not a new chain.
    assert protocol.record_metric("tvl", "ETHEREUM", 1.0, T0) is False
    assert protocol.record_metric("tvl", "binance", 2.0, T0) is True
    assert set(protocol.current) == {("tvl", "Ethereum"), ("tvl", "BSC")}


def test_ingest_records_canonical_names_on_both_parsing_paths() -> None:
    # The plain path (all fields of the usual types) and the checked one (a string time).
    plain = parse_observation({"protocol": "a", "chain": "optimism", "value": 1, "observed_at": T0})
    checked = parse_observation(
        {"protocol": "a", "chain": "optimism", "value": 1, "observed_at": "2023-11-14T22:13:20Z"}
    )
    assert plain.chain == checked.chain == "OP Mainnet"
    app = DefiRealtime()
    app.ingest(
        [
            build_batch(
                observations=[
                    {"protocol": "a", "chain": "Ethereum ", "value": 1.0, "observed_at": T0},
                    {"protocol": "a", "chain": "ethereum", "value": 2.0, "observed_at": T0 + 1},
                ],
                listings=[{"protocol": "a", "name": "A", "chains": ["xdai", "Gnosis", "Base"]}],
            )
        ]
    )
    protocol = app.get_protocol("a")
    assert protocol.chains == ["Gnosis", "Base", "Ethereum"]
    assert protocol.current[("tvl", "Ethereum")] == (2.0, T0 + 1)


def test_events_recorded_before_normalising_are_read_back_canonical() -> None:
    # As a store written by an earlier version holds them: aliases, lower case, spaces.
    protocol = Protocol(
        slug="old", name="Old", category="", chains=["binance", "Ethereum "], url=""
    )
    protocol._details_updated("old", "Old", "", ["xDai"], "", None)
    metric = Protocol.MetricRecorded(
        originator_id=protocol.id,
        originator_version=protocol.version + 1,
        timestamp=Protocol.MetricRecorded.create_timestamp(),
        slug="old",
        metric="tvl",
        chain="optimism",
        value=1.0,
        observed_at=T0,
        source="",
    )
    listed, updated = protocol.collect_events()
    assert listed.chains == ["binance", "Ethereum "]  # type: ignore[attr-defined]
    entries = [to_entry(position, event) for position, event in enumerate((listed, updated), 1)]
    assert [entry.data["chains"] for entry in entries if entry is not None] == [
        ["BSC", "Ethereum"],
        ["Gnosis"],
    ]
    entry = to_entry(3, metric)
    assert entry is not None
    assert entry.data["chain"] == "OP Mainnet"
    metric.mutate(protocol)
    assert ("tvl", "OP Mainnet") in protocol.current
