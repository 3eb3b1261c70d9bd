"""The first-run sample: real DeFiLlama data shipped inside the package.

``defi-realtime serve --sample`` (what ``make run`` starts) loads it through the same path
as ``defi-realtime ingest`` when the event store is empty, so a new user sees real numbers
at once; ``serve`` alone starts empty. Three ``/protocols`` captures of December 2025 (a
week apart, so the 1d and 7d changes have points to compare) and the daily TVL histories of
38 protocols: DeFiLlama's figures (https://defillama.com), credited in ``sample/README.md``.
``scripts/make_sample.py`` rebuilds the files from the full captures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["SAMPLE_DIR", "SAMPLE_FILES", "SAMPLE_SOURCE"]

SAMPLE_DIR: Final = Path(__file__).with_name("sample")
# Snapshots first: they list each protocol (name, category, chains) before its history.
SAMPLE_FILES: Final = (
    SAMPLE_DIR / "protocol-snapshots.jsonl.gz",
    SAMPLE_DIR / "tvl-history.jsonl.gz",
)
# The observations' source label: the sample's facts stay told apart from live ones.
SAMPLE_SOURCE: Final = "defillama-sample"
