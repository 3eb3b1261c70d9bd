"""Reading market-data files into ingest items (adapters.defillama_files)."""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from defi_realtime.adapters.defillama_files import (
    ReadItem,
    UnknownFormatError,
    detect_format,
    estimate_items,
    read_items,
)
from defi_realtime.domain.protocol import check_slug
from tests.services import require_file

REAL_SNAPSHOTS = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "defillama"
    / "protocol-snapshots.jsonl.gz"
)

ISO = "2025-12-19T17:17:23-03:00"
ISO_UNIX = datetime(2025, 12, 19, 20, 17, 23, tzinfo=UTC).timestamp()
DAY = 1_765_152_000  # 2025-12-08T00:00:00Z


def write_jsonl(path: Path, rows: Sequence[Any], *, gz: bool = False) -> Path:
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def write_json(path: Path, document: Any, *, gz: bool = False, indent: int | None = None) -> Path:
    data = json.dumps(document, indent=indent).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def items(path: Path, **kwargs: Any) -> list[ReadItem]:
    return list(read_items(path, **kwargs))


def snapshot_row(name: str, tvl: Any, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "captured_at": ISO,
        "name": name,
        "category": "Lending",
        "tvl": tvl,
        "chains": ["Ethereum", "Arbitrum"],
        "oracles": ["Chainlink"],
        "url": "https://example.org",
    }
    row.update(extra)
    return row


AAVE_LITE = {
    "id": "1599",
    "name": "Aave V3",
    "slug": "aave-v3",
    "category": "Lending",
    "chains": ["Ethereum", "Arbitrum"],
    "url": "https://aave.com",
    "tvl": 300.0,
    "chainTvls": {
        "Ethereum": 200.0,
        "Arbitrum": 100,
        "borrowed": 50.0,
        "Ethereum-borrowed": 40.0,
        "staking": 7.0,
        "Ethereum-staking": 7.0,
        "pool2": 1.0,
        "Arbitrum-pool2": 1.0,
        "doublecounted": 3.0,
    },
    "change_1d": 0.5,
}
CEX_LITE = {
    "name": "Some Exchange",
    "category": "CEX",
    "chains": ["Bitcoin"],
    "url": None,
    "tvl": None,
    "chainTvls": {"Bitcoin": None},
}

PROTOCOL_DETAIL = {
    "id": "1599",
    "name": "Aave V3",
    "category": "Lending",
    "chains": ["Ethereum", "Arbitrum"],
    "url": "https://aave.com",
    "currentChainTvls": {"Ethereum": 2.0, "Ethereum-borrowed": 1.0, "borrowed": 1.0},
    "tvl": [
        {"date": DAY, "totalLiquidityUSD": 10.0},
        {"date": DAY + 86_400, "totalLiquidityUSD": 12},
    ],
    "tokensInUsd": [],
    "chainTvls": {
        "Ethereum": {
            "tvl": [
                {"date": DAY, "totalLiquidityUSD": 7.0},
                {"date": DAY + 86_400, "totalLiquidityUSD": 8.0},
            ],
            "tokensInUsd": [],
            "tokens": [],
        },
        "Arbitrum": {"tvl": [{"date": DAY + 86_400, "totalLiquidityUSD": 4.0}]},
        "Ethereum-borrowed": {"tvl": [{"date": DAY, "totalLiquidityUSD": 99.0}]},
        "borrowed": {"tvl": [{"date": DAY, "totalLiquidityUSD": 99.0}]},
        "staking": {"tvl": [{"date": DAY, "totalLiquidityUSD": 99.0}]},
        "pool2": {"tvl": [{"date": DAY, "totalLiquidityUSD": 99.0}]},
    },
}


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("gz", [False, True])
def test_detects_every_format(tmp_path: Path, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    cases = {
        "snapshots-jsonl": write_jsonl(
            tmp_path / f"s.jsonl{suffix}", [snapshot_row("A", 1.0)], gz=gz
        ),
        "tvl-history-jsonl": write_jsonl(
            tmp_path / f"h.jsonl{suffix}",
            [{"protocol": "save", "name": "Save", "date": DAY, "tvl": 1}],
            gz=gz,
        ),
        "observations-jsonl": write_jsonl(
            tmp_path / f"o.jsonl{suffix}",
            [{"token": "coingecko:ethereum", "price": 1.0, "observed_at": DAY}],
            gz=gz,
        ),
        "defillama-protocols": write_json(tmp_path / f"ps.json{suffix}", [AAVE_LITE], gz=gz),
        "defillama-protocol": write_json(tmp_path / f"p.json{suffix}", PROTOCOL_DETAIL, gz=gz),
    }
    for expected, path in cases.items():
        assert detect_format(path) == expected, path.name


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path: Path) -> None:
    hidden_gz = write_jsonl(tmp_path / "rows.jsonl", [snapshot_row("A", 1.0)], gz=True)
    plain_named_gz = write_jsonl(tmp_path / "rows.jsonl.gz", [snapshot_row("B", 2.0)])
    assert detect_format(hidden_gz) == "snapshots-jsonl"
    assert detect_format(plain_named_gz) == "snapshots-jsonl"
    assert [i.item["protocol"] for i in items(hidden_gz) if i.item] == ["a"]
    assert [i.item["protocol"] for i in items(plain_named_gz) if i.item] == ["b"]


def test_detects_pretty_printed_documents(tmp_path: Path) -> None:
    protocols = write_json(tmp_path / "protocols.json", [AAVE_LITE], indent=2)
    protocol = write_json(tmp_path / "aave-v3.json", PROTOCOL_DETAIL, indent=2)
    wrapped = write_json(tmp_path / "lite.json", {"protocols": [AAVE_LITE], "chains": []})
    assert detect_format(protocols) == "defillama-protocols"
    assert detect_format(protocol) == "defillama-protocol"
    assert detect_format(wrapped) == "defillama-protocols"


def test_jsonl_with_a_broken_first_line_is_still_recognised(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", ['{"captured_at": "2025-', snapshot_row("A", 1.0)])
    assert detect_format(path) == "snapshots-jsonl"
    read = items(path)
    assert [i.kind for i in read] == ["invalid", "observation"]
    assert read[0].line == 1


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"a,b,c\n1,2,3\n", b"[1, 2, 3]", b'{"hello": "world"}\n', b"{ not json"],
)
def test_unknown_formats_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "weird.json"
    path.write_bytes(content)
    with pytest.raises(UnknownFormatError):
        detect_format(path)
    assert estimate_items(path) is None


# --------------------------------------------------------------------------- snapshots


def test_snapshot_rows_become_total_tvl_observations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row("Aave V3", 12)])
    [read] = items(path)
    assert read == ReadItem(
        "observation",
        {
            "protocol": "aave-v3",
            "metric": "tvl",
            "chain": "total",
            "value": 12.0,
            "observed_at": ISO_UNIX,
            "source": "defillama:snapshot",
            "name": "Aave V3",
            "category": "Lending",
            "chains": ["Ethereum", "Arbitrum"],
            "url": "https://example.org",
            "oracles": ["Chainlink"],
        },
        1,
        None,
    )
    assert isinstance(read.item and read.item["value"], float)


def test_snapshot_null_tvl_yields_a_listing(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl", [snapshot_row("Binance CEX", None, url=None, category="CEX")]
    )
    [read] = items(path)
    assert read.kind == "listing"
    assert read.item == {
        "protocol": "binance-cex",
        "name": "Binance CEX",
        "category": "CEX",
        "chains": ["Ethereum", "Arbitrum"],
        "url": None,
        "oracles": ["Chainlink"],
        "observed_at": ISO_UNIX,
    }


def test_snapshot_null_url_is_left_out_of_observations(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row("A", 1.0, url=None)])
    [read] = items(path)
    assert read.item is not None
    assert "url" not in read.item
    assert read.item["oracles"] == ["Chainlink"]  # kept (ADR 0033)


@pytest.mark.parametrize(
    ("captured_at", "expected"),
    [
        (ISO, ISO_UNIX),
        ("2025-12-08T00:00:00Z", float(DAY)),
        ("2025-12-08T00:00:00", float(DAY)),  # naive means UTC
        ("2025-12-08", float(DAY)),
        (DAY, float(DAY)),
        (str(DAY), float(DAY)),
    ],
)
def test_snapshot_timestamps(tmp_path: Path, captured_at: Any, expected: float) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row("A", 1.0, captured_at=captured_at)])
    [read] = items(path)
    assert read.item is not None
    assert read.item["observed_at"] == expected


def test_malformed_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            snapshot_row("A", 1.0),
            "",  # blank lines are skipped, not reported
            "{this is not json",
            "[1, 2]",
            snapshot_row("B", "lots"),
            snapshot_row("C", 1.0, captured_at="yesterday"),
            {"captured_at": ISO, "tvl": 1.0},
            snapshot_row("D", True),
            snapshot_row("E", 2.0),
        ],
    )
    read = items(path)
    assert [(i.kind, i.line) for i in read] == [
        ("observation", 1),
        ("invalid", 3),
        ("invalid", 4),
        ("invalid", 5),
        ("invalid", 6),
        ("invalid", 7),
        ("invalid", 8),
        ("observation", 9),
    ]
    errors = [i.error or "" for i in read if i.kind == "invalid"]
    assert "malformed JSON" in errors[0]
    assert "expected a JSON object" in errors[1]
    assert "tvl" in errors[2]
    assert "captured_at" in errors[3]
    assert "name" in errors[4]
    assert "tvl" in errors[5]
    assert all(i.item is None for i in read if i.kind == "invalid")


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("GenesisLRT (Native Restaking)", "genesislrt-native-restaking"),
        ("Lorenzo sUSD1+", "lorenzo-susd1"),
        ("JPEG'd", "jpegd"),
        ("Yay!", "yay"),
        ("ether.fi Stake", "ether.fi-stake"),
    ],
)
def test_slugs_of_names_keep_to_the_slug_alphabet(tmp_path: Path, name: str, slug: str) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row(name, 1.0)])
    [read] = items(path)
    assert read.item is not None
    assert (read.item["protocol"], read.item["name"]) == (slug, name)


def test_payload_slugs_outside_the_alphabet_are_mapped_into_it(tmp_path: Path) -> None:
    document = [
        {"name": "Lorenzo sUSD1+", "slug": "lorenzo-susd1+", "tvl": 1.0},
        {"name": "Ether.fi Stake", "slug": "ether.fi-stake", "tvl": 2.0},
        {"name": "Odd", "slug": "Odd (Legacy)", "tvl": 3.0},
    ]
    read = items(write_json(tmp_path / "p.json", document), observed_at=DAY)
    assert [i.item["protocol"] for i in read if i.item] == [
        "lorenzo-susd1",
        "ether.fi-stake",
        "odd-legacy",
    ]


def test_a_name_without_letters_or_digits_is_an_invalid_row(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row("(+)", 1.0), snapshot_row("B", 1.0)])
    read = items(path)
    assert [(i.kind, i.line) for i in read] == [("invalid", 1), ("observation", 2)]
    assert read[0].error == "row has name '(+)' has no letter or digit to make a slug of"


def test_a_line_naming_a_key_twice_is_invalid(tmp_path: Path) -> None:
    good = json.dumps({"protocol": "aave-v3", "value": 5, "observed_at": DAY})
    twice = good.replace('"value": 5', '"value": -1, "value": 5')
    nested = good.replace('"observed_at"', '"chains": [{"a": 1, "a": 2}], "observed_at"')
    path = write_jsonl(tmp_path / "o.jsonl", [good, twice, nested, good])
    read = items(path)
    assert [(i.kind, i.line) for i in read] == [
        ("observation", 1),
        ("invalid", 2),
        ("invalid", 3),
        ("observation", 4),
    ]
    assert read[1].error == "malformed JSON: duplicate key 'value' in an object"
    assert read[2].error == "malformed JSON: duplicate key 'a' in an object"
    snapshot = json.dumps(snapshot_row("A", 1.0)).replace('"tvl": 1.0', '"tvl": 1.0, "tvl": 2.0')
    [row] = items(write_jsonl(tmp_path / "s.jsonl", [snapshot]), fmt="snapshots-jsonl")
    assert (row.kind, row.error) == ("invalid", "malformed JSON: duplicate key 'tvl' in an object")


def test_names_that_slugify_alike_are_both_emitted(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [snapshot_row("mETH Protocol", 1.0), snapshot_row("METH  Protocol", 2.0)],
    )
    read = items(path)
    assert [(i.item["protocol"], i.item["name"]) for i in read if i.item] == [
        ("meth-protocol", "mETH Protocol"),
        ("meth-protocol", "METH  Protocol"),
    ]


def test_snapshot_gz_with_mixed_rows(tmp_path: Path) -> None:
    rows = [snapshot_row(f"P {n}", None if n % 3 == 0 else float(n)) for n in range(30)]
    path = write_jsonl(tmp_path / "snap.jsonl.gz", rows, gz=True)
    kinds = collections.Counter(i.kind for i in read_items(path))
    assert kinds == {"observation": 20, "listing": 10}


def test_source_override(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row("A", 1.0)])
    [read] = items(path, source="replay:test")
    assert read.item is not None
    assert read.item["source"] == "replay:test"


def test_truncated_gzip_is_reported_not_raised(tmp_path: Path) -> None:
    rows = [snapshot_row(f"P {n}", float(n)) for n in range(2_000)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    read = items(path, fmt="snapshots-jsonl")
    assert read[-1].kind == "invalid"
    assert "truncated" in (read[-1].error or "")
    assert all(i.kind == "observation" for i in read[:-1])


def test_reading_is_lazy(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [snapshot_row(f"P {n}", 1.0) for n in range(100)])
    iterator = read_items(path)
    assert next(iterator).line == 1
    assert next(iterator).line == 2


# --------------------------------------------------------------------------- tvl history


def test_history_rows(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "h.jsonl.gz",
        [
            {"protocol": "save", "name": "Save", "date": DAY, "tvl": 370546},
            {"protocol": "Hedge", "name": "Hedge", "date": DAY + 86_400, "tvl": 1.5},
            {"protocol": "Rain.fi", "name": "Rain.fi", "date": "2025-12-08T00:00:00Z", "tvl": 2},
            {"protocol": "save", "name": "Save", "date": DAY, "tvl": None},
            {"protocol": "save", "name": "Save", "date": None, "tvl": 3},
        ],
        gz=True,
    )
    read = items(path)
    assert read[0] == ReadItem(
        "observation",
        {
            "protocol": "save",
            "metric": "tvl",
            "chain": "total",
            "value": 370546.0,
            "observed_at": float(DAY),
            "source": "defillama:history",
            "name": "Save",
        },
        1,
    )
    assert read[1].item is not None
    assert read[1].item["protocol"] == "hedge"
    assert read[2].item is not None
    assert (read[2].item["protocol"], read[2].item["observed_at"]) == ("rain.fi", float(DAY))
    assert [(i.kind, i.line) for i in read[3:]] == [("invalid", 4), ("invalid", 5)]


# --------------------------------------------------------------------------- own observations


def test_own_observations_pass_through(tmp_path: Path) -> None:
    observation = {
        "protocol": "aave-v3",
        "metric": "fees_24h",
        "chain": "Ethereum",
        "value": 1.5e6,
        "observed_at": "2025-12-08T00:00:00Z",
        "source": "my-feed",
        "name": "Aave V3",
    }
    price = {"token": "coingecko:ethereum", "price": 3100.5, "observed_at": DAY, "confidence": 0.99}
    listing = {"protocol": "new-dex", "name": "New DEX", "category": "Dexes"}
    unknown_field = {"protocol": "x", "metric": "tvl", "value": 1, "observed_at": DAY, "junk": 1}
    path = write_jsonl(
        tmp_path / "obs.jsonl",
        [observation, price, listing, unknown_field, {"hello": 1}, {"protocol": "x", "token": "y"}],
    )
    read = items(path)
    assert [i.kind for i in read] == [
        "observation",
        "price",
        "listing",
        "observation",
        "invalid",
        "invalid",
    ]
    assert read[0].item == observation  # unchanged, ISO time kept for the ingest validation
    assert read[1].item == {**price, "source": "file"}  # only a missing source is filled in
    assert read[2].item == listing
    assert read[3].item == {**unknown_field, "source": "file"}  # the ingest rejects "junk"
    [own_source] = items(write_jsonl(tmp_path / "p.jsonl", [price]), source="import")
    assert own_source.item is not None
    assert own_source.item["source"] == "import"


# --------------------------------------------------------------------------- /protocols


def test_protocols_total_and_real_chains(tmp_path: Path) -> None:
    path = write_json(tmp_path / "protocols.json", [AAVE_LITE, CEX_LITE])
    read = items(path, observed_at=1_765_000_000.5)
    aave = [i for i in read if i.item and i.item["protocol"] == "aave-v3"]
    assert all(i.kind == "observation" and i.line == 1 for i in aave)
    # The TVL sections are metrics of their own (in DeFiLlama's spelling), never tvl.
    assert {(i.item["metric"], i.item["chain"]): i.item["value"] for i in aave if i.item} == {
        ("tvl", "total"): 300.0,
        ("tvl", "Ethereum"): 200.0,
        ("tvl", "Arbitrum"): 100.0,
        ("borrowed", "total"): 50.0,
        ("borrowed", "Ethereum"): 40.0,
        ("staking", "total"): 7.0,
        ("staking", "Ethereum"): 7.0,
        ("pool2", "total"): 1.0,
        ("pool2", "Arbitrum"): 1.0,
        ("doublecounted", "total"): 3.0,
    }
    first = aave[0].item
    assert first is not None
    assert first["observed_at"] == 1_765_000_000.5
    assert first["source"] == "defillama:protocols"
    assert (first["name"], first["category"], first["url"]) == (
        "Aave V3",
        "Lending",
        "https://aave.com",
    )
    assert first["chains"] == ["Ethereum", "Arbitrum"]
    assert "change_1d" not in first
    # A null TVL keeps the protocol listed; a null chain value is "no figure" for that chain.
    cex = [i for i in read if i.line == 2]
    assert [i.kind for i in cex] == ["listing"]
    assert cex[0].item == {
        "protocol": "some-exchange",
        "name": "Some Exchange",
        "category": "CEX",
        "chains": ["Bitcoin"],
        "url": None,
        "oracles": None,
        "observed_at": 1_765_000_000.5,
    }
    assert estimate_items(path) == len(read)


def test_protocols_observed_at_defaults_to_mtime_and_accepts_iso(tmp_path: Path) -> None:
    path = write_json(tmp_path / "protocols.json.gz", [AAVE_LITE], gz=True)
    os.utime(path, (DAY, DAY))
    assert {i.item["observed_at"] for i in items(path) if i.item} == {float(DAY)}
    stamped = items(path, observed_at="2025-12-19T17:17:23-03:00")
    assert {i.item["observed_at"] for i in stamped if i.item} == {ISO_UNIX}
    moment = datetime(2025, 12, 8, tzinfo=UTC)
    assert {i.item["observed_at"] for i in items(path, observed_at=moment) if i.item} == {
        float(DAY)
    }


def test_protocols_bad_entries_are_reported(tmp_path: Path) -> None:
    bad_chain = {**AAVE_LITE, "chainTvls": {"Ethereum": "200"}}
    path = write_json(
        tmp_path / "protocols.json",
        [{"name": "Good", "tvl": 1.0}, "nope", {"tvl": 1.0}, {"name": "X", "tvl": "1"}, bad_chain],
    )
    read = items(path, observed_at=DAY)
    assert [(i.kind, i.line) for i in read] == [
        ("observation", 1),
        ("invalid", 2),
        ("invalid", 3),
        ("invalid", 4),
        ("observation", 5),
        ("invalid", 5),
    ]
    assert "Ethereum" in (read[-1].error or "")


def test_broken_json_document_yields_one_invalid_item(tmp_path: Path) -> None:
    path = tmp_path / "protocols.json"
    path.write_text('[{"name": "A", "tvl": 1},\n {"name": ')
    assert detect_format(path) == "defillama-protocols"
    [read] = items(path)
    assert read.kind == "invalid"
    assert "malformed JSON" in (read.error or "")


# --------------------------------------------------------------------------- /protocol/{slug}


@pytest.mark.parametrize("gz", [False, True])
def test_protocol_detail_series(tmp_path: Path, gz: bool) -> None:
    path = write_json(tmp_path / "aave.json", PROTOCOL_DETAIL, gz=gz, indent=1)
    read = items(path)
    assert all(i.kind == "observation" for i in read)
    got = [
        (i.item["metric"], i.item["chain"], i.item["observed_at"], i.item["value"])
        for i in read
        if i.item
    ]
    assert got == [
        ("tvl", "total", DAY, 10.0),
        ("tvl", "total", DAY + 86_400, 12.0),
        ("tvl", "Ethereum", DAY, 7.0),
        ("tvl", "Ethereum", DAY + 86_400, 8.0),
        ("tvl", "Arbitrum", DAY + 86_400, 4.0),
        ("borrowed", "Ethereum", DAY, 99.0),
        ("borrowed", "total", DAY, 99.0),
        ("staking", "total", DAY, 99.0),
        ("pool2", "total", DAY, 99.0),
    ]
    first = read[0].item
    assert first is not None
    assert first["protocol"] == "aave-v3"  # no slug in the payload: slug of the name
    assert first["source"] == "defillama:protocol"
    assert first["category"] == "Lending"
    assert estimate_items(path) == 9


def test_protocol_detail_prefers_payload_slug_and_reports_bad_points(tmp_path: Path) -> None:
    document = {
        "name": "Thing",
        "slug": "thing-v2",
        "tvl": [{"date": DAY, "totalLiquidityUSD": None}, {"date": "soon", "totalLiquidityUSD": 1}],
        "chainTvls": {"Solana": {"tvl": [{"date": DAY, "totalLiquidityUSD": 5}]}, "Sui": 3},
    }
    read = items(write_json(tmp_path / "thing.json", document))
    assert [(i.kind, i.line) for i in read] == [
        ("invalid", 1),
        ("invalid", 2),
        ("observation", 1),
        ("invalid", 1),
    ]
    assert "tvl[0]" in (read[0].error or "")
    assert "tvl[1].date" in (read[1].error or "")
    assert read[2].item is not None
    assert read[2].item["protocol"] == "thing-v2"
    assert "Sui" in (read[3].error or "")


# --------------------------------------------------------------------------- estimates


def test_estimate_counts_jsonl_lines(tmp_path: Path) -> None:
    rows = [snapshot_row(f"P {n}", 1.0) for n in range(7)]
    assert estimate_items(write_jsonl(tmp_path / "a.jsonl", rows)) == 7
    assert estimate_items(write_jsonl(tmp_path / "b.jsonl.gz", rows, gz=True)) == 7
    no_trailing_newline = tmp_path / "c.jsonl"
    no_trailing_newline.write_text("\n".join(json.dumps(r) for r in rows))
    assert estimate_items(no_trailing_newline) == 7
    assert estimate_items(tmp_path / "missing.jsonl") is None


# --------------------------------------------------------------------------- real data


def test_real_protocol_snapshots() -> None:
    require_file(REAL_SNAPSHOTS)
    assert detect_format(REAL_SNAPSHOTS) == "snapshots-jsonl"
    assert estimate_items(REAL_SNAPSHOTS) == 59_910
    kinds: collections.Counter[str] = collections.Counter()
    # The file is grouped by capture, each group starting with its largest (tracked) protocol,
    # so a listing belongs to the capture of the observation before it.
    listings_per_capture: collections.Counter[float] = collections.Counter()
    meth_per_capture: collections.Counter[float] = collections.Counter()
    capture: float | None = None
    for read in read_items(REAL_SNAPSHOTS):
        kinds[read.kind] += 1
        assert read.item is not None, read.error
        if read.kind == "observation":
            capture = read.item["observed_at"]
            if read.item["protocol"] == "meth-protocol":
                meth_per_capture[read.item["observed_at"]] += 1
        else:
            assert capture is not None
            listings_per_capture[capture] += 1
        # Every slug derived from the real names is in DeFiLlama's alphabet.
        assert check_slug(read.item["protocol"])
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", read.item["protocol"]), read.item
    assert sum(kinds.values()) == 59_910
    assert kinds["invalid"] == 0
    assert len(listings_per_capture) == 9  # 9 distinct observed_at values
    assert all(1_400 <= n <= 1_600 for n in listings_per_capture.values())
    assert kinds["listing"] == sum(listings_per_capture.values())
    # Two distinct protocols share the slug in the latest capture: both are emitted.
    latest = max(listings_per_capture)
    assert latest == datetime.fromisoformat("2025-12-19T17:17:23-03:00").timestamp()
    assert meth_per_capture[latest] == 2
