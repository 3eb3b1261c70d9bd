"""Bulk import of ingest items (files, pollers): chunking, slug collisions, totals."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..domain.protocol import slugify
from .ingest import IngestBatch, IngestResult, build_batch

CHUNK_ITEMS = 5_000
FIRST_CHUNK_ITEMS = 1_000
MAX_IN_FLIGHT = 4


@dataclass(slots=True)
class ImportTotals:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    renamed_slugs: int = 0
    position: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: IngestResult) -> None:
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.position = max(self.position, result.position)
        for rejection in result.rejected:
            self.reject(rejection.reason)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        # Group reasons without their varying values ("got -3.2") for a readable summary.
        key = reason.split(", got ")[0]
        self.reasons[key] = self.reasons.get(key, 0) + 1


class SlugRegistry:
    """Keeps distinct protocols apart when they slugify alike. DeFiLlama lists two "mETH
    Protocol"s (Liquid Staking and Liquid Restaking) in the same snapshot: their names give
    one slug. When a second (name, category) claims a slug at the same ``observed_at``, it
    becomes ``slug-<category>`` from then on. A protocol that merely changes category between
    snapshots is not a collision. Deterministic for a given file, so re-importing it maps every
    row to the same protocol."""

    def __init__(self) -> None:
        self._claims: dict[tuple[str, Any], tuple[str, str]] = {}
        self._aliases: dict[tuple[str, str, str], str] = {}

    @property
    def renamed(self) -> int:
        return len(self._aliases)

    def resolve(self, item: Mapping[str, Any]) -> Mapping[str, Any]:
        slug, name = item.get("protocol"), item.get("name")
        if not isinstance(slug, str) or not isinstance(name, str):
            return item
        category = str(item.get("category") or "")
        alias = self._aliases.get((slug, name, category))
        if alias is None:
            observed_at = item.get("observed_at")
            if observed_at is None:
                return item
            holder = self._claims.setdefault((slug, observed_at), (name, category))
            if holder == (name, category):
                return item
            suffix = slugify(category) if category else hashlib.sha1(name.encode()).hexdigest()[:6]
            alias = f"{slug}-{suffix}"
            self._aliases[(slug, name, category)] = alias
        return {**item, "protocol": alias}


Item = tuple[str, Mapping[str, Any] | None, str | None]
Chunk = tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[Mapping[str, Any]], list[str]]


def chunks(
    items: Iterable[Item], size: int = CHUNK_ITEMS, first: int = FIRST_CHUNK_ITEMS
) -> Iterator[Chunk]:
    """Group ``(kind, item, error)`` triples into (observations, prices, listings, errors);
    the first group is smaller, so that a writer waiting for it starts sooner."""
    observations: list[Mapping[str, Any]] = []
    prices: list[Mapping[str, Any]] = []
    listings: list[Mapping[str, Any]] = []
    errors: list[str] = []
    count, limit = 0, min(first, size)
    for kind, item, error in items:
        if kind == "observation" and item is not None:
            observations.append(item)
        elif kind == "price" and item is not None:
            prices.append(item)
        elif kind == "listing" and item is not None:
            listings.append(item)
        else:
            errors.append(error or "unreadable item")
        count += 1
        if count >= limit:
            yield observations, prices, listings, errors
            observations, prices, listings, errors = [], [], [], []
            count, limit = 0, size
    if count:
        yield observations, prices, listings, errors


@dataclass(slots=True)
class Prepared:
    """One chunk, read and validated: what the writer records, and what was refused."""

    batch: IngestBatch
    size: int  # items read for it (for progress)
    errors: list[str]  # items that could not be read


def prepare(
    items: Iterable[Item], *, resolve_slugs: bool = True, registry: SlugRegistry | None = None
) -> Iterator[Prepared]:
    """Read side of an import: chunk the items, keep colliding slugs apart, validate.

    Pure CPU and no I/O of its own, so it may run in another process than the writer
    (``defi-realtime ingest`` does: ``entrypoints/reading.py``)."""
    registry = registry if registry is not None else SlugRegistry()
    for observations, prices, listings, errors in chunks(items):
        if resolve_slugs:
            observations = [registry.resolve(item) for item in observations]
            listings = [registry.resolve(item) for item in listings]
        batch = build_batch(observations, prices, listings, partial=True)
        size = len(observations) + len(prices) + len(listings) + len(errors)
        yield Prepared(batch, size, errors)


def import_prepared(
    prepared: Iterable[Prepared],
    submit: Callable[[IngestBatch], Future[IngestResult]],
    *,
    progress: Callable[[int], None] | None = None,
) -> ImportTotals:
    """Write side: submit prepared chunks with partial acceptance (valid items recorded, each
    bad one counted with its reason), several in flight so the writer can group-commit."""
    totals = ImportTotals()
    in_flight: list[tuple[Future[IngestResult], int]] = []

    def settle(entry: tuple[Future[IngestResult], int]) -> None:
        future, size = entry
        totals.add(future.result())
        if progress is not None:
            progress(size)

    for chunk in prepared:
        for error in chunk.errors:
            totals.reject(error)
        if chunk.batch.size == 0:
            totals.add(IngestResult(rejected=list(chunk.batch.rejected)))
            if progress is not None:
                progress(chunk.size)
            continue
        in_flight.append((submit(chunk.batch), chunk.size))
        while len(in_flight) >= MAX_IN_FLIGHT:
            settle(in_flight.pop(0))
    for entry in in_flight:
        settle(entry)
    return totals


def import_items(
    items: Iterable[Item],
    submit: Callable[[IngestBatch], Future[IngestResult]],
    *,
    progress: Callable[[int], None] | None = None,
    resolve_slugs: bool = True,
) -> ImportTotals:
    """Import items in one thread: ``prepare`` then ``import_prepared``."""
    registry = SlugRegistry()
    totals = import_prepared(
        prepare(items, resolve_slugs=resolve_slugs, registry=registry), submit, progress=progress
    )
    totals.renamed_slugs = registry.renamed
    return totals
