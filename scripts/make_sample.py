"""Rebuild the first-run sample that ``defi-realtime serve --sample`` loads.

Reads the December 2025 DeFiLlama captures (``protocol-snapshots.jsonl.gz`` and
``tvl-history.jsonl.gz``) from DIR and writes a small subset next to the package:
three ``/protocols`` captures a week apart (so 1d and 7d changes have a point to compare
with) and every daily TVL history, gzip-compressed with no timestamp (so a rebuild from the
same input gives the same bytes).

    python scripts/make_sample.py PATH/TO/defillama
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

# The captures kept: a week before the last one, the evening before it, and the last one.
CAPTURES = ("2025-12-12T16:37:43-03:00", "2025-12-18T18:21:37-03:00", "2025-12-19T17:17:23-03:00")
TARGET = Path(__file__).resolve().parent.parent / "src" / "entrypoints" / "sample"


def _write(path: Path, lines: list[bytes]) -> None:
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.writelines(lines)


def main(source: Path) -> None:
    with gzip.open(source / "protocol-snapshots.jsonl.gz") as snapshots:
        kept = [line for line in snapshots if json.loads(line)["captured_at"] in CAPTURES]
    _write(TARGET / "protocol-snapshots.jsonl.gz", kept)
    with gzip.open(source / "tvl-history.jsonl.gz") as histories:
        _write(TARGET / "tvl-history.jsonl.gz", list(histories))
    for path in sorted(TARGET.glob("*.gz")):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
