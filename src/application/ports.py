"""Ports: the roles the application needs from infrastructure, as ``typing.Protocol``s.

Adapters (``defi_realtime.adapters``) implement them; every port with an embedded and a
production adapter has one contract test suite run against both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from .alert_rules import AlertRuleView
from .audit import AuditPage, AuditQuery, AuditView
from .delivery import (
    AlertTransition,
    DeliveryAttempt,
    DeliveryProgress,
    DeliveryResult,
    JobHandler,
    NotificationJob,
    ParkedJob,
    PrepareRedrive,
)
from .hot_state import ProtocolState, TokenState
from .log import LogBatch, LogEntry
from .rate_limits import Quota, Verdict
from .smart_money import WalletMove
from .views import (
    AnomalyQuery,
    AnomalyView,
    MevQuery,
    MevTotals,
    MevView,
    Page,
    PriceView,
    ProtocolQuery,
    ProtocolView,
    Series,
    SeriesQuery,
)

BatchHandler = Callable[[LogBatch], Awaitable[None]]


@runtime_checkable
class BulkEventReader(Protocol):
    """An event store recorder that reads many aggregates' events in one round trip (ingest
    loads a group's uncached protocols at once instead of one query each)."""

    def select_events_of(self, originator_ids: Sequence[UUID]) -> Sequence[StoredEvent]:
        """Every stored event of the given aggregates, in (originator, version) order."""
        ...

    def select_events_after(
        self, originator_ids: Sequence[UUID], versions: Sequence[int]
    ) -> Sequence[StoredEvent]:
        """The stored events of each aggregate after its version (``versions``, in the same
        order), in (originator, version) order: what follows each one's snapshot."""
        ...

    def select_last_of(self, originator_ids: Sequence[UUID]) -> Sequence[StoredEvent]:
        """The newest stored row of each aggregate that has one (used on a snapshots
        table: each aggregate's latest snapshot)."""
        ...


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""
        ...


class EventLog(Protocol):
    """Reads the event store's global sequence (synchronous: call it from a thread)."""

    def read(self, after: int, limit: int) -> LogBatch:
        """Up to ``limit`` positions after ``after``; ``last`` is the last position scanned."""
        ...

    def head(self) -> int:
        """The highest position recorded so far (0 for an empty store)."""
        ...


class EventFanout(Protocol):
    """Carries log batches from the process that follows the event store to every process
    that serves clients. At-least-once and ordered per publisher; consumers drop duplicates
    by position and fill gaps from the ``EventLog``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, batch: LogBatch) -> None:
        """Returns once the batch is accepted by the transport (broker confirm)."""
        ...

    def listen(self, handler: BatchHandler) -> None:
        """Register a handler for every batch published from now on (call before start)."""
        ...


class PositionStore(Protocol):
    """Durable tracking position of a log follower (e.g. the relay)."""

    async def load(self, name: str) -> int: ...

    async def save(self, name: str, position: int) -> None: ...


class CheckpointStore(Protocol):
    """Where followers keep checkpoints of their in-memory state (``checkpoints.py``).

    Blocking (callers run it in a thread). ``save`` is atomic: after a crash at any point
    of it, ``load`` returns the previous record or the new one, whole.
    """

    def load(self, name: str) -> bytes | None: ...

    def save(self, name: str, data: bytes) -> None: ...


class HotProjection(Protocol):
    """Current values, changes and rankings, applied exactly once with tracking."""

    async def position(self) -> int:
        """The last log position applied."""
        ...

    async def apply(self, batch: LogBatch) -> bool:
        """Apply a batch atomically with its tracking position (exactly once).

        Entries at or below the current position are skipped: a replayed batch changes
        nothing and returns False. A batch whose ``after`` is beyond the current position
        would leave a gap: it raises ``LogGapError`` and changes nothing."""
        ...

    async def list_protocols(self, query: ProtocolQuery) -> Page: ...

    async def get_protocol(self, slug: str) -> ProtocolView | None: ...

    async def get_protocols(self, slugs: Sequence[str]) -> list[ProtocolView]: ...

    async def prices(
        self, tokens: Sequence[str] | None = None, limit: int = 100
    ) -> list[PriceView]:
        """Latest prices of the given tokens (or the most recently updated ones)."""
        ...

    async def reset(self) -> None:
        """Forget everything (before a rebuild)."""
        ...

    async def restore(
        self,
        position: int,
        protocols: Mapping[str, ProtocolState | None],
        tokens: Mapping[str, TokenState | None],
    ) -> bool:
        """Overwrite these keys with their states folded from the log up to ``position``
        (None: the key must not exist), only while the projection is still at
        ``position``: False, and nothing written, when it has moved (fold further and try
        again). Repairs drift found by reconciliation; the position itself stays."""
        ...


class AnomalyReadModel(Protocol):
    """The recorded anomalies (synchronous: call it from a thread); the history read model
    applies them from the log with everything else."""

    def anomalies(self, query: AnomalyQuery) -> list[AnomalyView]: ...


class MevReadModel(Protocol):
    """The live MEV detections (synchronous: call it from a thread); the history read model
    applies them, and their retractions, from the log with everything else."""

    def mev(self, query: MevQuery) -> tuple[list[MevView], MevTotals]: ...


class WalletMovesReadModel(Protocol):
    """The wallet moves of live EVM blocks (synchronous: call it from a thread); the history
    read model applies them, and the orphaning of their blocks, from the log."""

    def wallet_moves(self, chain_id: int) -> list[WalletMove]: ...


class HistoryReadModel(Protocol):
    """Every observation as queryable history (synchronous: call it from a thread)."""

    def position(self) -> int: ...

    def apply(self, batch: LogBatch) -> bool:
        """Same contract as ``HotProjection.apply``: one transaction with the tracking row,
        replays skipped (returns False), gaps refused with ``LogGapError``."""
        ...

    def series(self, query: SeriesQuery) -> Series: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


class BacktestHistory(HistoryReadModel, MevReadModel, Protocol):
    """What an alert backtest reads: metric series, and MEV detections for ``mev`` rules."""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One raw row of the history read model as the log determines it: ``kind`` ``metric``
    (``values``: metric, chain, observed_at, value) or ``price`` (``values``: observed_at,
    price, confidence), ``key`` the protocol slug or the token."""

    position: int
    kind: str
    key: str
    values: tuple[str | float | None, ...]


@dataclass(frozen=True, slots=True)
class ListingRow:
    """A protocol's listing as the history read model holds it."""

    slug: str
    name: str
    category: str
    chains: tuple[str, ...]
    url: str
    position: int


CurrentValues = Mapping[tuple[str, str, str], tuple[float, float]]
"""``(protocol, metric, chain)`` -> ``(value, observed_at)`` of each series' current state."""


class HistorySnapshot(Protocol):
    """One consistent read of the history read model (a single database snapshot)."""

    @property
    def position(self) -> int:
        """The log position the snapshot accounts for."""
        ...

    def rows(self, after: int, last: int) -> Iterator[HistoryRow]:
        """The raw metric and price rows with ``after < position <= last``, by position."""
        ...

    def listings(self) -> dict[str, ListingRow]: ...

    def current_values(self) -> CurrentValues:
        """The current state of every series, from the rollup the reads use."""
        ...

    @property
    def detail_since(self) -> float | None:
        """The time before which raw rows were dropped (None: none were): the rows of the
        log observed earlier are not expected (ADR 0047)."""
        ...


@dataclass(frozen=True, slots=True)
class DetailDropped:
    """What one retention run did: the history's new horizon (detail observed before it is
    no longer held), how many whole partitions (PostgreSQL) and rows (SQLite) went."""

    horizon: float
    partitions: int
    rows: int


class DetailStore(Protocol):
    """The raw detail of the history read model, held back to a horizon (ADR 0047;
    synchronous: call it from a thread). Rollups (series states, day closes, group days)
    and the event log are never dropped."""

    def detail_since(self) -> float | None:
        """The time before which observations were dropped (None: everything is held)."""
        ...

    def drop_detail_before(self, cutoff: float) -> DetailDropped:
        """Drop the observations older than ``cutoff`` (the horizon only moves forward)."""
        ...


class AuditableHistory(Protocol):
    """What reconciliation needs of the history read model (synchronous: call it from a
    thread): a consistent read to compare with the log, and a repair."""

    def snapshot(self) -> AbstractContextManager[HistorySnapshot]: ...

    def restore(
        self,
        position: int,
        protocols: Sequence[str],
        tokens: Sequence[str],
        entries: Sequence[LogEntry],
    ) -> bool:
        """Replace the rows of these protocols and tokens with those of ``entries`` (every
        entry of theirs up to ``position``) and rebuild the rollups, in one transaction with
        the tracking row, only while the model is at ``position`` (False, nothing written,
        when it has moved)."""
        ...


class UpstreamTvl(Protocol):
    """A DeFiLlama-compatible API's current total TVL per protocol slug."""

    async def current_tvl(self) -> dict[str, float]: ...


class AlertRuleReadModel(Protocol):
    """Alert rules by owner, folded from the log's rule entries (synchronous: call it from a
    thread). The history read model's ``alert_rules`` table implements it."""

    def position(self) -> int:
        """The last log position folded in."""
        ...

    def alert_rules(
        self, owner: str | None = None, *, include_deleted: bool = False
    ) -> list[AlertRuleView]:
        """``owner``'s rules (everyone's when None), in creation order."""
        ...


# -- alert delivery ---------------------------------------------------------------------


class Notifier(Protocol):
    """Sends one notification over one channel kind (webhook, email)."""

    async def send(self, job: NotificationJob) -> DeliveryResult:
        """One attempt; failures are returned, not raised."""
        ...


class WebhookSender(Protocol):
    """POSTs one signed JSON body to a webhook URL (the guard's SSRF rule applies)."""

    async def post(
        self,
        url: str,
        secret: str | None,
        idempotency_key: str,
        payload: Mapping[str, Any],
    ) -> DeliveryResult:
        """One attempt; failures are returned, not raised (a refused target is not
        retryable)."""
        ...


class NotificationQueue(Protocol):
    """A durable work queue of notification jobs with delayed retries and dead letters.

    The policy (how long to wait, when to give up) is the handler's: it answers each job
    with a ``Decision`` and the queue carries it out (ack, re-deliver after the delay, or
    park with the dead letters). A job is acknowledged only after its handler returned,
    so a worker that dies mid-delivery has the job delivered again (at-least-once)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def enqueue(self, jobs: Sequence[NotificationJob]) -> None:
        """Returns once every job is durably accepted (broker confirm)."""
        ...

    def consume(self, handler: JobHandler) -> None:
        """Deliver jobs to ``handler`` once started (call before ``start``)."""
        ...

    async def dead_letters_of(self, rule_id: str) -> list[ParkedJob]:
        """The dead letters of rule ``rule_id``, oldest first."""
        ...

    async def redrive(self, rule_id: str, prepare: PrepareRedrive) -> list[NotificationJob]:
        """Put rule ``rule_id``'s dead letters back on the work queue as first attempts
        (same idempotency keys) and return them; ``prepare`` is awaited with them before
        they are enqueued. A dead letter leaves the dead letters only once its job is
        enqueued (a failure leaves it there, to redrive again)."""
        ...


class WebhookTargets(Protocol):
    """Which webhook URLs the node may call (the SSRF guard): asked when a rule is created
    or its channels change, with the same decision the delivery takes."""

    async def check_new(self, url: str) -> None:
        """Raise ``WebhookTargetRefused`` for a URL a rule must not name."""
        ...


class DeliveryLog(Protocol):
    """The record of every delivery attempt, and the alert transitions they deliver
    (synchronous: call it from a thread).

    It also journals jobs for a queue that does not outlive its process: ``record_pending``
    keeps a job until an attempt recorded for its key delivers it, ``pending`` lists the
    unsettled ones, to enqueue again after a restart, and ``parked`` the dead letters."""

    def record(self, attempt: DeliveryAttempt) -> None:
        """Record one attempt; a delivered or dead-lettered one settles its key's job (a
        redrive opens it again)."""
        ...

    def record_pending(self, jobs: Sequence[NotificationJob]) -> None:
        """Journal ``jobs`` (durably, on return); keys already journaled or settled are
        left as they are."""
        ...

    def pending(self) -> list[NotificationJob]:
        """Every journaled job not settled yet, oldest first."""
        ...

    def parked(self, rule_id: str) -> list[ParkedJob]:
        """The journaled jobs of ``rule_id`` that were dead-lettered (and not redriven
        since), oldest first, each with its round's last attempt and the reason."""
        ...

    def progress(self, idempotency_key: str) -> DeliveryProgress: ...

    def attempts(self, rule_id: str, limit: int = 1_000) -> list[DeliveryAttempt]:
        """A rule's attempts, oldest first."""
        ...

    def transitions(self, rule_id: str, limit: int = 1_000) -> list[AlertTransition]:
        """A rule's firings and resolutions (from the history read model), oldest first."""
        ...

    def close(self) -> None: ...


# -- price history (DeFiLlama's coins API) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class PricePoint:
    """One recorded price of a token (its canonical id): when it was observed, the price,
    its confidence (None if the source gave none) and the log position that recorded it.
    Of several observations at one ``timestamp`` the latest recorded (highest position)
    is the one reported."""

    token: str
    timestamp: float
    price: float
    confidence: float | None
    position: int


@dataclass(frozen=True, slots=True)
class PriceLookup:
    """Which price to find: ``token``'s observation nearest to ``at``, at most ``width``
    seconds before or after it."""

    token: str
    at: float
    width: float


class PriceHistory(Protocol):
    """Every recorded price, read by token and time (synchronous: call it from a thread).

    Tokens are canonical ids (``canonical_token_id``); a token with no price is absent
    from an answer (or None in ``nearest``'s)."""

    def latest(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        """Each token's most recently observed price (the largest ``timestamp``)."""
        ...

    def first(self, tokens: Sequence[str]) -> dict[str, PricePoint]:
        """Each token's earliest observed price."""
        ...

    def nearest(self, lookups: Sequence[PriceLookup]) -> list[PricePoint | None]:
        """One answer per lookup, in order: the observation nearest to ``at`` within
        ``width`` either side (the earlier one of two equally near), or None."""
        ...


class QueryCache(Protocol):
    """Answers of aggregate queries by key (the query and the log position it was computed
    at: an answer under a key never goes stale, it only stops being asked for)."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, answer: bytes) -> None: ...


class RateLimiter(Protocol):
    """Counts hits against quotas per identity (ADR 0036). Shared by every node when the
    production adapter (Redis) is used; within the process otherwise."""

    async def hit(self, quota: Quota, identity: str, cost: int = 1) -> Verdict:
        """Count ``cost`` hits of ``identity`` against ``quota`` if the budget allows them
        all (else none); the verdict says whether it did and what is left."""
        ...

    async def peek(self, quota: Quota, identity: str) -> Verdict:
        """The verdict a hit would get now, without counting one."""
        ...


class JsonRpc(Protocol):
    """An EVM node's JSON-RPC API, as an EVM collector uses it (``HttpxJsonRpc``: several
    URLs with failover, a request budget)."""

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        """One request; the ``result``, or raises on an error answer."""
        ...

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several requests in one (a JSON-RPC batch); the results in the order asked."""
        ...

    async def aclose(self) -> None: ...


# -- personal data (crypto-shredding, docs/adr/0042-crypto-shredding.md) --------------------


@dataclass(frozen=True, slots=True)
class AccountKey:
    """An account's data key: ``key_id`` is written beside every field it seals, so that
    replay finds it; ``secret`` is the 256-bit AES-GCM key."""

    key_id: str
    secret: bytes


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge deleted, and whether no copy of it is left in the store's files
    (False: an older transaction still sees it; purging again later finishes the job)."""

    rows: int
    scrubbed: bool


class AccountKeys(Protocol):
    """Per-account data keys in a store that can truly forget one (synchronous: call it
    from a thread). Subjects are opaque digests of what an account's data is recorded
    under: the store never sees an owner string."""

    def key_for(self, subject: str) -> AccountKey | None:
        """The subject's key, made on first use; None once the subject was erased (its data
        must then never be written in clear)."""
        ...

    def find(self, key_id: str) -> bytes | None:
        """The secret of ``key_id``; None when it was destroyed (or never existed)."""
        ...

    def destroy(self, subject: str) -> Purged:
        """Destroy the subject's key for good (no copy left in the store's files) and
        remember the subject as erased (``rows``: 1 if there was a key). Again on an erased
        subject: nothing to delete, the files are scrubbed again."""
        ...

    def close(self) -> None: ...


class PersonalRecords(Protocol):
    """A read model that may hold an account's personal data in clear (synchronous)."""

    def purge(self, owner: str, rule_ids: Sequence[str]) -> Purged:
        """Delete every row of ``owner`` (and of its rules ``rule_ids``), leaving no copy in
        the store's files."""


class AuditRecords(Protocol):
    """The audit trail's read model (``audit_records``), filled from the audit log."""

    def position(self) -> int:
        """The audit log position of the newest record held (0: none)."""
        ...

    def apply(self, views: Sequence[AuditView]) -> None:
        """Hold ``views`` (ascending positions); one already held is ignored."""
        ...

    def query(self, query: AuditQuery) -> AuditPage:
        """The records ``query`` selects, newest first."""
        ...


class ConnectionSlots(Protocol):
    """Concurrent connections per client address (anonymous WebSocket sockets, ADR 0049):
    counted across every node when the production adapter (Redis) is used, within the
    process otherwise."""

    async def acquire(self, address: str, limit: int) -> bool:
        """Take one of ``address``'s ``limit`` slots; False (and nothing taken) when all
        are held."""
        ...

    def release(self, address: str) -> None:
        """Give back a slot ``acquire`` took (a socket closed): at once on this node, on the
        others as soon as the shared count has it (it never waits for I/O)."""
        ...

    async def aclose(self) -> None:
        """Give back every slot this node holds (it is shutting down)."""
        ...
