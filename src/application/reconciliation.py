"""Reconciliation: the read models checked against the event log, and repaired from it.

A run folds the log with the same pure fold the hot projections use (``hot_state``) and
compares (ADR 0035):

* the hot projection (memory or Redis): every protocol's and token's view (current values,
  1h/1d/7d changes, listing, position), at the projection's own position;
* the history read model: every raw metric and price row (by log position), the listings
  and the current state of every series, inside one database snapshot, at the position
  that snapshot accounts for;
* optionally an upstream DeFiLlama-compatible API's current total TVL (reported only: the
  log is our truth, upstream's differences are facts about upstream).

Each store is compared at the position it has reached, never at the log's head, so ingest
running meanwhile is not drift. The hot projection has no snapshot: a key that changed
while the views were read (its folded position is after the read began) is read again, up
to ``RECHECKS`` times, and otherwise counted as skipped, not as drift.

Drift in our own read models is repaired by re-applying the drifted keys from the log
(``HotProjection.restore``, ``AuditableHistory.restore``), each a compare-and-set on the
store's position, so the followers keep running. Each run is recorded as
``ReconciliationCompleted`` through ``record``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final

from .hot_state import HotState
from .log import LogBatch, LogEntry
from .ports import (
    AuditableHistory,
    EventLog,
    HistoryRow,
    HistorySnapshot,
    HotProjection,
    ListingRow,
    UpstreamTvl,
)
from .telemetry import NO_TELEMETRY, Telemetry
from .views import PriceView, ProtocolQuery, ProtocolView

__all__ = ["Discrepancy", "Reconciliation", "ReconciliationReport"]

# Floats compare equal within this relative (or, near zero, absolute) difference: every
# store keeps values bit for bit (Redis as ``repr``, SQL as double precision), so anything
# beyond rounding in a recomputed change is drift.
RELATIVE_TOLERANCE: Final = 1e-12
ABSOLUTE_TOLERANCE: Final = 1e-12
# Discrepancies listed per store in a run's record (all are counted).
MAX_DETAILS: Final = 100
RECHECKS: Final = 3
REPAIR_ATTEMPTS: Final = 5
READ_LIMIT: Final = 10_000
_EVERYTHING: Final = 2**31 - 1
_BEYOND: Final = 2**62

ReportRecorder = Callable[["ReconciliationReport"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """One key whose stored value differs from the log's: ``key`` is ``protocol:<slug>``,
    ``token:<id>``, ``series:<slug>/<metric>/<chain>`` or ``row:<position>``; ``field`` what
    differs; ``expected`` the log's value, ``found`` the store's (None: missing)."""

    store: str
    key: str
    field: str
    expected: str | float | None
    found: str | float | None


@dataclass
class ReconciliationReport:
    """What a run compared, found and repaired."""

    started_at: float
    completed_at: float = 0.0
    positions: dict[str, int] = field(default_factory=dict)
    compared: dict[str, int] = field(default_factory=dict)
    discrepancy_counts: dict[str, int] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def total_discrepancies(self) -> int:
        return sum(self.discrepancy_counts.values())

    @property
    def duration(self) -> float:
        return self.completed_at - self.started_at

    def add(self, found: Iterable[Discrepancy]) -> None:
        """Count ``found`` (one per key and field) and keep the first ``MAX_DETAILS`` per
        store."""
        for discrepancy in found:
            store = discrepancy.store
            count = self.discrepancy_counts.get(store, 0)
            if count < MAX_DETAILS:
                self.discrepancies.append(discrepancy)
            self.discrepancy_counts[store] = count + 1

    def record(self) -> dict[str, Any]:
        """The fields of ``ReconciliationCompleted``."""
        return {
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "positions": dict(self.positions),
            "compared": dict(self.compared),
            "discrepancy_counts": dict(self.discrepancy_counts),
            "discrepancies": [asdict(d) for d in self.discrepancies],
            "repaired": dict(self.repaired),
            "skipped": dict(self.skipped),
        }


class _Fold:
    """The log folded up to ``position`` (forward only), with the history's expectations:
    each series' current value (the latest observed time, the later recording on a tie)."""

    def __init__(self, event_log: EventLog) -> None:
        self.event_log = event_log
        self.state = HotState()
        self.current: dict[tuple[str, str, str], tuple[float, float, int]] = {}
        # slug -> (name, category, chains, url): the history's listing row.
        self.listings: dict[str, tuple[str, str, tuple[str, ...], str]] = {}

    @property
    def position(self) -> int:
        return self.state.position

    def batches(self, until: int) -> Iterable[LogBatch]:
        """Read and fold the log up to ``until``, yielding each batch folded (cut at
        ``until``)."""
        while self.position < until:
            batch = self.event_log.read(self.position, min(READ_LIMIT, until - self.position))
            if batch.last <= self.position:
                return  # the log ends before ``until`` (a store ahead of the log: reported)
            if batch.last > until:
                batch = LogBatch(
                    batch.after, until, tuple(e for e in batch.entries if e.position <= until)
                )
            self._fold_current(batch.entries)
            self.state.apply(batch)
            yield batch

    def advance(self, until: int) -> None:
        for _ in self.batches(until):
            pass

    def _fold_current(self, entries: Iterable[LogEntry]) -> None:
        current = self.current
        for entry in entries:
            data = entry.data
            if entry.kind in ("protocol_listed", "protocol_updated"):
                self.listings[entry.key] = (
                    str(data["name"]),
                    str(data["category"]),
                    tuple(str(chain) for chain in data["chains"]),
                    str(data["url"]),
                )
            if entry.kind != "metric":
                continue
            key = (entry.key, str(data["metric"]), str(data.get("chain") or "total"))
            observed_at = float(data["observed_at"])
            held = current.get(key)
            if held is None or observed_at >= held[1]:
                current[key] = (float(data["value"]), observed_at, entry.position)


Views = tuple[dict[str, ProtocolView], dict[str, PriceView]]


async def _read_hot(hot: HotProjection, keys: tuple[Sequence[str], Sequence[str]] | None) -> Views:
    """Every view of the hot projection (``keys`` None), or those of ``keys``."""
    if keys is None:
        page = await hot.list_protocols(ProtocolQuery(limit=_EVERYTHING))
        protocols = list(page.items)
        prices = await hot.prices(None, limit=_EVERYTHING)
    else:
        protocols = await hot.get_protocols(keys[0])
        prices = await hot.prices(keys[1]) if keys[1] else []
    return {v.slug: v for v in protocols}, {v.token: v for v in prices}


class _HotCheck:
    """The hot projection's views, read while its position went from ``read_from`` to
    ``read_until``, and (after ``check``) how they compare with the fold at ``read_until``.

    A key whose folded position is after ``read_from`` changed during the read: its view
    may be from before that change, so a difference is "moving" (read again), not drift.
    Any other key did not change during the read, so its view must equal the fold's."""

    def __init__(
        self,
        views: Views,
        read_from: int,
        read_until: int,
        keys: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> None:
        self.views = views
        self.read_from = read_from
        self.read_until = read_until
        self.keys = keys
        self.found: list[Discrepancy] | None = None
        self.moving_protocols: list[str] = []
        self.moving_tokens: list[str] = []
        self.compared = 0

    def check(self, fold: _Fold) -> None:
        """Compare with ``fold``, which must be at ``read_until`` (or the log's end)."""
        fold.advance(self.read_until)
        state = fold.state
        protocol_views, price_views = self.views
        if self.keys is None:
            slugs = protocol_views.keys() | state.protocol_views.keys()
            tokens = price_views.keys() | state.price_views.keys()
        else:
            slugs, tokens = set(self.keys[0]), set(self.keys[1])
        self.compared = len(slugs) + len(tokens)
        found: list[Discrepancy] = []
        for slug in sorted(slugs):
            expected = state.protocol_views.get(slug)
            differences = _differences(
                "hot", f"protocol:{slug}", expected, protocol_views.get(slug)
            )
            if differences and expected is not None and expected.position > self.read_from:
                self.moving_protocols.append(slug)
            else:
                found.extend(differences)
        for token in sorted(tokens):
            price = state.price_views.get(token)
            differences = _differences("hot", f"token:{token}", price, price_views.get(token))
            if differences and price is not None and price.position > self.read_from:
                self.moving_tokens.append(token)
            else:
                found.extend(differences)
        self.found = found


class Reconciliation:
    """Runs reconciliation (``run``). ``hot``/``history``/``upstream`` None: not compared
    (a process whose hot projection is its own empty memory compares none)."""

    def __init__(
        self,
        event_log: EventLog,
        *,
        hot: HotProjection | None,
        history: AuditableHistory | None,
        upstream: UpstreamTvl | None = None,
        record: ReportRecorder | None = None,
        upstream_tolerance: float = 0.01,
        telemetry: Telemetry = NO_TELEMETRY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._event_log = event_log
        self._hot = hot
        self._history = history
        self._upstream = upstream
        self._record = record
        self._upstream_tolerance = upstream_tolerance
        self._telemetry = telemetry
        self._clock = clock

    async def run(self, *, repair: bool = True) -> ReconciliationReport:
        """One run: compare, repair (unless ``repair`` is False), record, report."""
        started = time.monotonic()
        report = ReconciliationReport(started_at=self._clock())
        fold = _Fold(self._event_log)
        hot: _HotCheck | None = None
        if self._hot is not None:
            read_from = await self._hot.position()
            views = await _read_hot(self._hot, None)
            hot = _HotCheck(views, read_from, await self._hot.position())
        history_drift: tuple[set[str], set[str]] = (set(), set())
        if self._history is not None:
            history_drift = await asyncio.to_thread(
                self._compare_history, self._history, fold, report, hot
            )
        drifted_hot: set[str] = set()
        if hot is not None and self._hot is not None:
            if hot.found is None:
                await asyncio.to_thread(hot.check, fold)
            drifted_hot = await self._recheck_hot(self._hot, fold, report, hot)
        if self._upstream is not None:
            await self._compare_upstream(self._upstream, fold, report)
        if repair:
            if drifted_hot and self._hot is not None:
                report.repaired["hot"] = await self._repair_hot(self._hot, fold, drifted_hot)
            protocols, tokens = history_drift
            if (protocols or tokens) and self._history is not None:
                report.repaired["history"] = await asyncio.to_thread(
                    self._repair_history, self._history, protocols, tokens
                )
        report.completed_at = self._clock()
        self._telemetry.reconciliation_completed(
            time.monotonic() - started, report.discrepancy_counts, report.completed_at
        )
        if self._record is not None:
            await self._record(report)
        return report

    async def run_every(
        self, interval: float, last_run: Callable[[], Awaitable[float | None]]
    ) -> None:
        """Run every ``interval`` seconds, counted from the last recorded run (``last_run``:
        when it completed, None before the first), so a restart or a new leader does not
        run again early; forever (cancel to stop)."""
        while True:
            last = await last_run()
            due = self._clock() + interval if last is None else last + interval
            await asyncio.sleep(max(0.0, due - self._clock()))
            await self.run()

    # -- the hot projection ---------------------------------------------------------------

    async def _recheck_hot(
        self, hot: HotProjection, fold: _Fold, report: ReconciliationReport, check: _HotCheck
    ) -> set[str]:
        """Read again the keys that moved while they were read, compare them again; the
        drifted keys (``protocol:<slug>`` / ``token:<id>``)."""
        report.positions["hot"] = check.read_until
        report.compared["hot"] = check.compared
        found = list(check.found or ())
        for _ in range(RECHECKS):
            if not (check.moving_protocols or check.moving_tokens):
                break
            keys = (sorted(check.moving_protocols), sorted(check.moving_tokens))
            read_from = await hot.position()
            views = await _read_hot(hot, keys)
            check = _HotCheck(views, read_from, await hot.position(), keys)
            await asyncio.to_thread(check.check, fold)
            found.extend(check.found or ())
        moving = len(check.moving_protocols) + len(check.moving_tokens)
        if moving:
            report.skipped["hot"] = moving
        report.add(found)
        return {d.key for d in found}

    async def _repair_hot(self, hot: HotProjection, fold: _Fold, keys: set[str]) -> int:
        slugs = [key.removeprefix("protocol:") for key in keys if key.startswith("protocol:")]
        tokens = [key.removeprefix("token:") for key in keys if key.startswith("token:")]
        for _ in range(REPAIR_ATTEMPTS):
            position = await hot.position()
            if position < fold.position:
                return 0  # the projection went back (a rebuild): it re-applies everything
            await asyncio.to_thread(fold.advance, position)
            state = fold.state
            if await hot.restore(
                position,
                {slug: state.protocols.get(slug) for slug in slugs},
                {token: state.tokens.get(token) for token in tokens},
            ):
                return len(keys)
        return 0

    # -- the history read model -----------------------------------------------------------

    def _compare_history(
        self,
        history: AuditableHistory,
        fold: _Fold,
        report: ReconciliationReport,
        hot: _HotCheck | None,
    ) -> tuple[set[str], set[str]]:
        """Stream the log and the snapshot's rows side by side (by position), then compare
        the listings and current values; the drifted protocols and tokens."""
        protocols: set[str] = set()
        tokens: set[str] = set()
        found: list[Discrepancy] = []
        with history.snapshot() as snapshot:
            position = snapshot.position
            report.positions["history"] = position
            rows = 0
            # The hot projection is compared where it is: fold no further than the lower of
            # the two positions first, so the fold can stop at each in turn.
            first = position if hot is None else min(position, hot.read_until)
            for batch in fold.batches(first):
                rows += self._compare_rows(snapshot, batch, found, protocols, tokens)
            if hot is not None and hot.read_until <= position:
                hot.check(fold)
            for batch in fold.batches(position):
                rows += self._compare_rows(snapshot, batch, found, protocols, tokens)
            # Rows beyond the log's end (or a model ahead of the log) are drift too.
            for row in snapshot.rows(fold.position, _BEYOND):
                found.append(_row_discrepancy(row, None))
                _mark(row.kind, row.key, protocols, tokens)
            listings = snapshot.listings()
            current = snapshot.current_values()
        found.extend(self._compare_listings(fold, listings, protocols))
        found.extend(self._compare_current(fold, current, protocols))
        report.compared["history"] = rows + len(listings) + len(current)
        report.add(found)
        return protocols, tokens

    @staticmethod
    def _compare_rows(
        snapshot: HistorySnapshot,
        batch: LogBatch,
        found: list[Discrepancy],
        protocols: set[str],
        tokens: set[str],
    ) -> int:
        expected = {row.position: row for row in map(_expected_row, batch.entries) if row}
        stored = {row.position: row for row in snapshot.rows(batch.after, batch.last)}
        for position in sorted(expected.keys() | stored.keys()):
            want, have = expected.get(position), stored.get(position)
            if want != have and not _same_row(want, have):
                found.append(_row_discrepancy(want, have))
                for row in (want, have):
                    if row is not None:
                        _mark(row.kind, row.key, protocols, tokens)
        return len(expected)

    @staticmethod
    def _compare_listings(
        fold: _Fold, listings: Mapping[str, ListingRow], protocols: set[str]
    ) -> list[Discrepancy]:
        found = []
        for slug in sorted(fold.listings.keys() | listings.keys()):
            row = listings.get(slug)
            want = fold.listings.get(slug)
            have = None if row is None else (row.name, row.category, row.chains, row.url)
            if want != have:
                found.append(
                    Discrepancy("history", f"protocol:{slug}", "listing", _text(want), _text(have))
                )
                protocols.add(slug)
        return found

    @staticmethod
    def _compare_current(
        fold: _Fold,
        current: Mapping[tuple[str, str, str], tuple[float, float]],
        protocols: set[str],
    ) -> list[Discrepancy]:
        found = []
        for key in sorted(fold.current.keys() | current.keys()):
            held = fold.current.get(key)
            want = None if held is None else held[:2]
            have = current.get(key)
            if want is None or have is None or not all(map(_close, want, have)):
                found.append(
                    Discrepancy(
                        "history",
                        f"series:{'/'.join(key)}",
                        "current",
                        None if want is None else want[0],
                        None if have is None else have[0],
                    )
                )
                protocols.add(key[0])
        return found

    def _repair_history(
        self, history: AuditableHistory, protocols: set[str], tokens: set[str]
    ) -> int:
        """Collect the drifted keys' entries from the log and restore them, again from
        where the scan ended whenever the model moved on meanwhile."""
        entries: list[LogEntry] = []
        scanned = 0
        for _ in range(REPAIR_ATTEMPTS):
            with history.snapshot() as snapshot:
                position = snapshot.position
            while scanned < position:
                batch = self._event_log.read(scanned, min(READ_LIMIT, position - scanned))
                if batch.last <= scanned:
                    break
                entries.extend(
                    e
                    for e in batch.entries
                    if e.position <= position
                    and (
                        (e.kind == "price" and e.key in tokens)
                        or (e.kind != "price" and e.key in protocols)
                    )
                )
                scanned = min(batch.last, position)
            if history.restore(position, sorted(protocols), sorted(tokens), entries):
                return len(protocols) + len(tokens)
        return 0

    # -- upstream -------------------------------------------------------------------------

    async def _compare_upstream(
        self, upstream: UpstreamTvl, fold: _Fold, report: ReconciliationReport
    ) -> None:
        tvl = await upstream.current_tvl()
        found = []
        compared = 0
        for slug, theirs in sorted(tvl.items()):
            state = fold.state.protocols.get(slug)
            ours = None if state is None or state.tvl is None else state.tvl.value
            if ours is None:
                continue  # not collected here: nothing to compare
            compared += 1
            if not math.isclose(ours, theirs, rel_tol=self._upstream_tolerance, abs_tol=1.0):
                found.append(Discrepancy("upstream", f"protocol:{slug}", "tvl", ours, theirs))
        report.compared["upstream"] = compared
        report.add(found)


def _expected_row(entry: LogEntry) -> HistoryRow | None:
    data = entry.data
    if entry.kind == "metric":
        values: tuple[str | float | None, ...] = (
            str(data["metric"]),
            str(data.get("chain") or "total"),
            float(data["observed_at"]),
            float(data["value"]),
        )
        return HistoryRow(entry.position, "metric", entry.key, values)
    if entry.kind == "price":
        confidence = data.get("confidence")
        values = (
            float(data["observed_at"]),
            float(data["price"]),
            None if confidence is None else float(confidence),
        )
        return HistoryRow(entry.position, "price", entry.key, values)
    return None


def _same_row(want: HistoryRow | None, have: HistoryRow | None) -> bool:
    if want is None or have is None:
        return False
    if (want.kind, want.key, len(want.values)) != (have.kind, have.key, len(have.values)):
        return False
    return all(_equal(a, b) for a, b in zip(want.values, have.values, strict=True))


def _row_discrepancy(want: HistoryRow | None, have: HistoryRow | None) -> Discrepancy:
    row = want or have
    assert row is not None
    return Discrepancy(
        "history",
        f"row:{row.position}",
        f"{row.kind}:{row.key}",
        None if want is None else _text(want.values),
        None if have is None else _text(have.values),
    )


def _mark(kind: str, key: str, protocols: set[str], tokens: set[str]) -> None:
    (tokens if kind == "price" else protocols).add(key)


def _differences(store: str, key: str, expected: Any, found: Any) -> list[Discrepancy]:
    """One discrepancy per field of two views (dataclasses) that differs."""
    if expected is None and found is None:
        return []
    if expected is None or found is None:
        return [Discrepancy(store, key, "exists", expected is not None, found is not None)]
    result = []
    for spec in fields(expected):
        want, have = getattr(expected, spec.name), getattr(found, spec.name)
        if not _equal(want, have):
            result.append(Discrepancy(store, key, spec.name, _scalar(want), _scalar(have)))
    return result


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return _close(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)


def _scalar(value: Any) -> str | float | None:
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return float(value)
    return _text(value)


def _text(value: Any) -> str | None:
    return None if value is None else repr(value)
