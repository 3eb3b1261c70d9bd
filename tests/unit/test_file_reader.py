"""``defi-realtime ingest`` reads the file in a forked child: same chunks as reading it in
process, failures reported, no child left behind."""

from __future__ import annotations

import gzip
import json
import multiprocessing
from pathlib import Path

import pytest

from defi_realtime.adapters.defillama_files import detect_format, read_items
from defi_realtime.application.importing import Prepared, SlugRegistry, prepare
from defi_realtime.entrypoints.reading import FileReader, ReadError

ROWS = 12_000  # more than two chunks of 5,000


def snapshot_file(path: Path, rows: int = ROWS) -> Path:
    with gzip.open(path, "wt") as out:
        for n in range(rows):
            row = {
                "captured_at": f"2025-12-{1 + n // 2_000:02d}T00:00:00Z",
                # Two protocols that slugify alike: one of them is renamed.
                "name": "Same Name" if n % 500 == 0 else f"Protocol {n % 2_000}",
                "category": "Dexs" if n % 1_000 == 0 else "Lending",
                "tvl": float(n) if n % 97 else -1.0,  # some rows are refused
                "chains": ["Ethereum"],
                "url": "https://example.org",
            }
            out.write(json.dumps(row) + "\n")
    return path


def shape(chunks: list[Prepared]) -> list[tuple[object, ...]]:
    return [
        (chunk.size, chunk.errors, chunk.batch.size, [r.reason for r in chunk.batch.rejected])
        for chunk in chunks
    ]


def test_the_child_prepares_what_this_process_would(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path / "snapshots.jsonl.gz")
    fmt = detect_format(path)
    registry = SlugRegistry()
    items = ((i.kind, i.item, i.error) for i in read_items(path, fmt=fmt))
    here = list(prepare(items, registry=registry))
    with FileReader(path, fmt) as reader:
        assert reader._process is not None, "forked on Linux"
        there = list(reader)
        child = reader._process
    assert shape(there) == shape(here)
    assert [c.batch.metrics for c in there] == [c.batch.metrics for c in here]
    assert [c.batch.listings for c in there] == [c.batch.listings for c in here]
    assert reader.renamed == registry.renamed > 0
    assert not child.is_alive()
    assert multiprocessing.active_children() == []


def test_a_read_that_fails_in_the_child_is_reported_and_the_child_ends(tmp_path: Path) -> None:
    # (A truncated or corrupt file is not a failure: its bad part is a rejected item.)
    fmt = detect_format(snapshot_file(tmp_path / "snapshots.jsonl.gz", rows=10))
    gone = tmp_path / "gone.jsonl.gz"  # removed between detection and reading
    with FileReader(gone, fmt) as reader, pytest.raises(ReadError) as error:
        for _ in reader:
            pass
    assert "gone.jsonl.gz" in str(error.value)
    assert "FileNotFoundError" in str(error.value)
    assert multiprocessing.active_children() == []


def test_leaving_early_stops_the_child(tmp_path: Path) -> None:
    path = snapshot_file(tmp_path / "snapshots.jsonl.gz", rows=60_000)
    with FileReader(path, detect_format(path)) as reader:
        next(iter(reader))  # the writer failed after the first chunk, say
        child = reader._process
    assert child is not None
    assert not child.is_alive()
