"""The defi-realtime application: use cases over the event-sourced aggregates.

Commands go get -> mutate -> save. ``ingest`` is built for throughput: a group of batches is
applied to a working set of aggregates and saved in ONE ``save()`` (one transaction), never
one commit per observation. Writes are meant to run on one writer thread per process (see
``writer.IngestWriter`` and docs/adr/0003-sync-event-store-async-server.md).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
)
from eventsourcing.domain import Aggregate, MutableOrImmutableAggregate
from eventsourcing.persistence import IntegrityError, Mapper, Recording, StoredEvent
from eventsourcing.utils import get_topic

from ..domain.account import Account
from ..domain.alert_rule import AlertRule, RuleBook
from ..domain.alert_values import Condition, ProtocolTarget, RuleTarget, TokenTarget
from ..domain.anomaly import AnomalyLog
from ..domain.api_key import ApiKey, KeyListing, hash_key
from ..domain.chains import canonical_chain
from ..domain.evm import EvmChain
from ..domain.mev import MevLedger
from ..domain.protocol import Protocol
from ..domain.recent import PRICE, Series
from ..domain.reconciliation import RECONCILIATION_LOG_ID, ReconciliationLog
from ..domain.subscription import (
    WEBHOOK_DIRECTORY_ID,
    Subscription,
    SubscriptionBook,
    WebhookDirectory,
)
from ..domain.token import Token
from .alert_rules import RuleObservation, RuleSnapshot
from .anomaly import Detection
from .evm_facts import ChainStep
from .ingest import IngestBatch, IngestResult, Listing, Rejection, ranges
from .mev_follower import MevStep
from .personal_fields import PersonalFieldsMapper
from .ports import AccountKeys
from .stored_observations import GroupObservations

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")

# Passing a version bypasses the aggregate cache: reads made outside the writer thread (auth,
# alert queries) must see other nodes' writes and must never share the writer's objects.
_LATEST = sys.maxsize
# Events between snapshots of a Protocol or Token: loading one reads its latest snapshot and
# at most this many events, however long its log (docs/adr/0045). A snapshot (a few KB, its
# state is bounded) per 200 events of ~250 bytes adds ~5-10 % to what is written.
SNAPSHOT_INTERVAL: Final = 200

log = logging.getLogger(__name__)


class ProtocolNotFound(LookupError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"protocol {slug!r} not found")
        self.slug = slug


class TokenNotFound(LookupError):
    """No price was ever recorded for the token (its aggregate does not exist)."""

    def __init__(self, token_id: str) -> None:
        super().__init__(f"token {token_id!r} not found")
        self.token_id = token_id


class AlertRuleNotFound(LookupError):
    def __init__(self, rule_id: UUID | str) -> None:
        super().__init__(f"alert rule {rule_id} not found")
        self.rule_id = str(rule_id)


class SubscriptionNotFound(LookupError):
    def __init__(self, subscription_id: UUID | str) -> None:
        super().__init__(f"subscription {subscription_id} not found")


class ApiKeyNotFound(LookupError):
    pass


class AccountNotFound(LookupError):
    def __init__(self, account_id: UUID | str) -> None:
        super().__init__(f"account {account_id} not found")
        self.account_id = str(account_id)


class AccountErased(LookupError):
    """The account was erased: it takes no new key."""

    def __init__(self, account_id: UUID | str) -> None:
        super().__init__(f"account {account_id} was erased")
        self.account_id = str(account_id)


@dataclass(frozen=True, slots=True)
class ClosedAccount:
    """What ``close_account`` recorded: the account's owner string, its keys (all revoked
    now), and the rules and subscriptions it deleted or closed."""

    account_id: UUID
    owner: str
    key_ids: tuple[UUID, ...]
    keys_revoked: int
    rule_ids: tuple[str, ...]
    rules_deleted: int
    subscription_ids: tuple[UUID, ...]


class DefiRealtime(Application[UUID]):
    """The application service. Persistence is chosen by its environment (see container)."""

    name = "DefiRealtime"
    # Writers keep hot aggregates in memory; the writer is the only mutator, so no deep
    # copies, and no fast-forward query per get (optimistic concurrency catches staleness:
    # a conflicting save raises IntegrityError, the cache is evicted and the group retried).
    env = {
        "AGGREGATE_CACHE_MAXSIZE": "100000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    # Setting intervals turns snapshotting on (IS_SNAPSHOTTING_ENABLED): a snapshots table
    # beside the events. ``_take_snapshots`` takes them from the saved aggregates.
    snapshotting_intervals: ClassVar[dict[type[MutableOrImmutableAggregate[Any]], int]] = {
        Protocol: SNAPSHOT_INTERVAL,
        Token: SNAPSHOT_INTERVAL,
    }

    def __init__(self, env: Any = None, *, account_keys: AccountKeys | None = None) -> None:
        # Read by ``construct_mapper``, which the base class calls.
        self._account_keys = account_keys
        super().__init__(env)
        # During an ingest (writer thread only): ids looked up and not found, and the
        # aggregates _preload found, which _load hands out on first use.
        self._absent: set[UUID] = set()
        self._preloaded: dict[UUID, Aggregate] = {}
        # During an ingest: what the group knows of observations beyond aggregates' windows.
        self._observations = GroupObservations(self._stored_events_of, self.mapper)

    def construct_mapper(self) -> Mapper[UUID]:
        """The configured mapper; the stock one with a template for MetricRecorded (the
        same bytes, a quarter of the time: application/metric_mapper.py) that seals
        personal fields (application/personal_fields.py)."""
        mapper = super().construct_mapper()
        if type(mapper) is not Mapper:  # MAPPER_TOPIC chose another: keep it
            return mapper
        # Personal fields sealed with their account's key (application/personal_fields.py);
        # without a key store they are written in clear and sealed ones read redacted.
        return PersonalFieldsMapper(
            mapper.transcoder,
            compressor=mapper.compressor,
            cipher=mapper.cipher,
            keys=self._account_keys,
        )

    # -- ingest -------------------------------------------------------------------------

    def ingest(self, batches: Sequence[IngestBatch]) -> list[IngestResult]:
        """Apply a group of batches and save them in one transaction."""

        def apply(working: dict[UUID, Aggregate]) -> tuple[list[IngestResult], int]:
            self._absent.clear()
            self._preloaded.clear()
            # Per attempt: a retry starts again from the stored events.
            self._observations = GroupObservations(self._stored_events_of, self.mapper)
            try:
                self._preload(batches)
                self._prefetch_old(batches)
                # Of a group of several batches, how many pending events each aggregate a
                # batch touched has after it: which batch recorded which event.
                # Keyed by the objects' identities: cheaper to hash than their UUIDs.
                marks: list[dict[int, int]] = []
                results = []
                for batch in batches:
                    touched: dict[int, Aggregate] | None = {} if len(batches) > 1 else None
                    results.append(self._apply_batch(batch, working, touched))
                    if touched is not None:
                        marks.append({key: len(a.pending_events) for key, a in touched.items()})
                # Only aggregates with new events: an unchanged one would record nothing.
                aggregates = [a for a in working.values() if a.pending_events]
                owners = _owners(aggregates, marks) if marks else None
                ids = self._save_group(aggregates)
            finally:
                self._absent.clear()
                self._preloaded.clear()
            if owners is None:
                for result in results:  # one batch at most: everything is its own
                    result.recorded = ranges(ids)
            else:
                recorded: list[list[int]] = [[] for _ in batches]
                for notification_id, owner in zip(ids, owners, strict=True):
                    recorded[owner].append(notification_id)
                for result, mine in zip(results, recorded, strict=True):
                    result.recorded = ranges(mine)
            return results, max(ids, default=0)

        results, position = self._retrying(apply)
        if not position and any(result.committed for result in results):
            # Nothing new (duplicates only): the head, from which a client can resume a
            # stream knowing it holds everything the batch carried.
            position = self.recorder.max_notification_id() or 0
        for result in results:
            if result.committed:
                result.position = position
        return results

    def save_aggregates(self, aggregates: Sequence[Aggregate]) -> list[Recording[UUID]]:
        """``save(*aggregates)`` for aggregates only, without its per-object type checks.

        ``Application.save`` accepts aggregates and events alike and tells them apart with
        ``isinstance`` against two ``runtime_checkable`` Protocols; on Python 3.11 each check
        walks the Protocol's attributes (``typing._get_protocol_attrs``), ~11 % of a 20,000
        observation group commit (docs/benchmarks.md). The steps after collecting are
        ``save``'s own, through the hooks eventsourcing's process applications override.
        """
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in aggregates:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        self.notify(processing.events)  # deprecated hook, called as save() does
        return recordings

    def _save_group(self, aggregates: Sequence[Aggregate]) -> list[int]:
        """Save an ingest group's aggregates in one transaction; the new positions, in the
        order of the aggregates' events (none: nothing written).

        ``save_aggregates`` minus what ingest never reads: a ``Recording`` and a
        ``Notification`` per event (~6 us each, ~5 % of importing the real snapshot file)
        and the ``_notify``/``notify`` hooks, which this application does not use (a test
        holds that). Stored events, cache and snapshots as ``save`` does them.
        """
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in aggregates:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        if not processing.events:
            return []
        stored = list(map(self.mapper.to_stored_event, processing.events))
        ids = self.recorder.insert_events(stored)
        cache = self.repository.cache
        if cache and not self.repository.fastforward:  # as _record does
            for aggregate_id, saved in processing.aggregates.items():
                cache.put(aggregate_id, saved)
        self._take_snapshots(processing)
        return list(ids or ())

    def _take_snapshots(self, processing: ProcessingEvent[UUID]) -> None:
        """Snapshot each saved Protocol or Token whose new events crossed a multiple of its
        interval, from the saved aggregate itself, all in one write.

        eventsourcing's own rebuilds each one from the store at that version (a query per
        snapshot). A snapshot is an optimisation, written after the events committed: if it
        fails, the events stand and loading reads a few more of them."""
        if self.snapshots is None:
            return
        first: dict[UUID, int] = {}
        for event in processing.events:
            first.setdefault(event.originator_id, event.originator_version)
        taken: list[Any] = []
        for aggregate_id, aggregate in processing.aggregates.items():
            interval = self.snapshotting_intervals.get(type(aggregate))
            start = first.get(aggregate_id)
            if interval is None or start is None or not isinstance(aggregate, Aggregate):
                continue
            if aggregate.version // interval > (start - 1) // interval:
                taken.append(type(aggregate).Snapshot.take(aggregate))
        if taken:
            try:
                self.snapshots.put(taken)
            except Exception:
                log.warning("%d snapshots not written", len(taken), exc_info=True)

    def _stored_events_of(self, aggregate_ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every stored event of the aggregates, in one query from a ``BulkEventReader``
        (one per aggregate otherwise)."""
        # A BulkEventReader (application/ports.py), asked by its method: importing the ports
        # module here would cost the CLI ~30 ms of imports it does not otherwise need.
        select_events_of = getattr(self.recorder, "select_events_of", None)
        if select_events_of is not None:
            return list(select_events_of(aggregate_ids))
        return [e for i in aggregate_ids for e in self.recorder.select_events(i)]

    def _loaded(self, aggregate_ids: Sequence[UUID]) -> dict[UUID, Aggregate]:
        """The aggregates, each from its latest snapshot (if any) and the events after it:
        two queries in all from ``BulkEventReader``s (two per aggregate otherwise)."""
        snapshots: dict[UUID, Any] = {}
        if self.snapshots is not None and aggregate_ids:
            snapshot_recorder = self.snapshots.recorder
            select_last_of = getattr(snapshot_recorder, "select_last_of", None)
            if select_last_of is not None:
                latest = list(select_last_of(aggregate_ids))
            else:
                latest = [
                    s
                    for i in aggregate_ids
                    for s in snapshot_recorder.select_events(i, desc=True, limit=1)
                ]
            for stored in latest:
                snapshot = self.mapper.to_domain_event(stored)
                snapshots[snapshot.originator_id] = snapshot
        found_events = self._stored_events_of([i for i in aggregate_ids if i not in snapshots])
        if snapshots:
            ids = list(snapshots)
            versions = [snapshots[i].originator_version for i in ids]
            select_events_after = getattr(self.recorder, "select_events_after", None)
            if select_events_after is not None:
                found_events.extend(select_events_after(ids, versions))
            else:
                for i, version in zip(ids, versions, strict=True):
                    found_events.extend(self.recorder.select_events(i, gt=version))
        events: dict[UUID, list[Any]] = {i: [s] for i, s in snapshots.items()}
        for stored in found_events:
            originator = stored.originator_id
            key = originator if isinstance(originator, UUID) else UUID(originator)
            events.setdefault(key, []).append(self.mapper.to_domain_event(stored))
        loaded: dict[UUID, Aggregate] = {}
        for aggregate_id, found in events.items():
            # project_aggregate's fold, without its per-event assert: an isinstance against a
            # runtime_checkable Protocol, which walks the Protocol's attributes on Python
            # 3.11 (most of the fold's time). Every event here came from our mapper.
            aggregate: Any = None
            for event in found:
                aggregate = event.mutate(aggregate)
            if isinstance(aggregate, Aggregate):
                loaded[aggregate_id] = aggregate
        return loaded

    def _prefetch_old(self, batches: Sequence[IngestBatch]) -> None:
        """Ask the store, in one read, about every observation of the group that is older
        than its (preloaded) aggregate's window: the domain asks ``_observations`` about
        each, and one read per group is cheaper than one per observation."""
        preloaded = self._preloaded
        wanted: dict[UUID, list[tuple[Series, float]]] = {}
        for batch in batches:
            for metric in batch.metrics:
                protocol = preloaded.get(Protocol.id_for(metric.protocol))
                if not isinstance(protocol, Protocol) or not protocol.horizon:
                    continue
                chain = canonical_chain(metric.chain)
                if protocol.beyond_window(metric.metric, chain, metric.observed_at):
                    series = (metric.metric, chain)
                    wanted.setdefault(protocol.id, []).append((series, metric.observed_at))
            for price in batch.prices:
                token = preloaded.get(Token.id_for(price.token))
                if isinstance(token, Token) and token.beyond_window(price.observed_at):
                    wanted.setdefault(token.id, []).append((PRICE, price.observed_at))
        self._observations.prefetch(wanted)

    def _evict(self, working: Iterable[UUID]) -> None:
        # The working set may hold mutated (unsaved) cached aggregates: drop them so the
        # next read rebuilds from the event store.
        cache = self.repository.cache
        if cache is None:
            return
        for aggregate_id in working:
            with contextlib.suppress(KeyError):
                cache.get(aggregate_id, evict=True)

    def _preload(self, batches: Sequence[IngestBatch]) -> None:
        """Load every aggregate the group names and the cache lacks, in ONE query when the
        recorder is a ``BulkEventReader`` (one per aggregate otherwise); the ones with no
        events are remembered as absent, so ``_load`` never queries during the group.

        Loading them one by one cost a round trip each: 6,689 for the real snapshot file,
        most of an import's wall time on PostgreSQL (docs/benchmarks.md). What is found is
        kept aside and enters the working set when an item first uses it, as before: the
        group's events are saved aggregate by aggregate in that order, which is the order
        of the log (and of the updates clients receive).
        """
        cache = self.repository.cache
        if cache is None:
            return  # _load looks each one up
        slugs = {metric.protocol for batch in batches for metric in batch.metrics}
        slugs.update(listing.protocol for batch in batches for listing in batch.listings)
        tokens = {price.token for batch in batches for price in batch.prices}
        wanted = [Protocol.id_for(slug) for slug in slugs]
        wanted.extend(Token.id_for(token) for token in tokens)
        # A cached aggregate is what _load would get from repository.get (the same object),
        # unless the repository would fast-forward or copy it on a get; then _load does that,
        # per aggregate, as before.
        cached_as_is = not (self.repository.fastforward or self.repository.deepcopy_from_cache)
        preloaded = self._preloaded
        missing: list[UUID] = []
        for aggregate_id in wanted:
            try:
                cached = cache.get(aggregate_id)
            except KeyError:
                missing.append(aggregate_id)
                continue
            if cached_as_is and isinstance(cached, Aggregate):
                preloaded[aggregate_id] = cached
        if not missing:
            return
        found = self._loaded(missing)
        for aggregate_id in missing:
            loaded = found.get(aggregate_id)
            if loaded is None:
                self._absent.add(aggregate_id)
                continue
            cache.put(aggregate_id, loaded)
            preloaded[aggregate_id] = loaded

    def _load(self, aggregate_id: UUID, working: dict[UUID, Aggregate]) -> Aggregate | None:
        found = working.get(aggregate_id)
        if found is not None:
            return found
        found = self._preloaded.get(aggregate_id)
        if found is not None:
            working[aggregate_id] = found
            return found
        if aggregate_id in self._absent:
            return None
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            # Remembered for the rest of this ingest: a new protocol is looked up by every
            # item that names it, and each miss is a query.
            self._absent.add(aggregate_id)
            return None
        working[aggregate_id] = aggregate
        return aggregate

    def _apply_batch(
        self,
        batch: IngestBatch,
        working: dict[UUID, Aggregate],
        touched: dict[int, Aggregate] | None = None,
    ) -> IngestResult:
        """Apply one batch to the working set; ``touched`` (if given) gets every aggregate
        the batch gave events to (and maybe some it did not), by ``id()``."""
        result = IngestResult(rejected=list(batch.rejected))
        observations = self._observations
        # A new protocol may be named by a later item of the batch than its first
        # observation: it is listed from the first named item before anything is recorded.
        first_named: dict[str, Listing] = {}
        for metric in batch.metrics:
            listing = metric.listing
            if listing is not None and listing.name and metric.protocol not in first_named:
                first_named[metric.protocol] = listing
        # Resolve first, mutate second: a batch that is refused must leave the (shared)
        # working set untouched.
        named = {listing.protocol for listing in batch.listings if listing.name}
        named.update(first_named)
        # dict.fromkeys, not a set: _load puts what it finds into the working set, whose
        # order is the order events are saved in (first use, item by item).
        unknown = {
            slug
            for slug in dict.fromkeys(metric.protocol for metric in batch.metrics)
            if slug not in named and self._load(Protocol.id_for(slug), working) is None
        }
        if unknown:
            result.rejected.extend(
                Rejection(
                    "observation",
                    metric.index,
                    f"unknown protocol {metric.protocol!r}: include 'name' (and category, "
                    "chains, url) to list it",
                    "protocol",
                )
                for metric in batch.metrics
                if metric.protocol in unknown
            )
        if result.rejected and not batch.partial:
            result.committed = False
            return result
        for listing in batch.listings:
            # Counted by what this listing did, not by whether the protocol has pending
            # events (an earlier batch of the same group may have left some: the counts
            # then depended on how the writer happened to group the batches).
            listed, changed = self._upsert_listing(listing, working)
            if touched is not None:
                touched[id(listed)] = listed
            if changed:
                result.accepted += 1
            else:
                result.duplicates += 1
        # Each protocol is resolved once per batch (a snapshot's rows are all different
        # protocols, so mostly once per item: one lookup, not two).
        protocols: dict[str, Protocol] = {}
        for metric in batch.metrics:
            slug = metric.protocol
            if slug in unknown:
                continue
            protocol = protocols.get(slug)
            if protocol is None:
                found = self._load(Protocol.id_for(slug), working)
                if found is None:  # known, so named by an item of this batch
                    protocol = self._list(first_named[slug], working)
                else:
                    assert isinstance(found, Protocol)
                    protocol = found
                protocols[slug] = protocol
            if metric.listing is not None:
                self._update_details(protocol, metric.listing)
            if protocol.record_metric(
                metric.metric,
                metric.chain,
                metric.value,
                metric.observed_at,
                metric.source,
                observations,
            ):
                result.accepted += 1
                recorded = protocol.pending_events[-1]
                assert isinstance(recorded, Protocol.MetricRecorded)
                observations.note(
                    protocol.id,
                    (recorded.metric, recorded.chain),
                    recorded.observed_at,
                    recorded.value,
                )
            else:
                result.duplicates += 1
        if touched is not None:
            touched.update((id(protocol), protocol) for protocol in protocols.values())
        for price in batch.prices:
            token_id = Token.id_for(price.token)
            token = self._load(token_id, working)
            if token is None:
                token = Token.register(price.token)
                working[token_id] = token
            assert isinstance(token, Token)
            if touched is not None:
                touched[id(token)] = token
            if token.record_price(
                price.price, price.observed_at, price.confidence, price.source, observations
            ):
                result.accepted += 1
                priced: Any = token.pending_events[-1]  # its PriceRecorded
                observations.note(token.id, PRICE, priced.observed_at, priced.price)
            else:
                result.duplicates += 1
        return result

    def _upsert_listing(
        self, listing: Listing, working: dict[UUID, Aggregate]
    ) -> tuple[Protocol, bool]:
        """The listed protocol, listed or updated from ``listing``; and whether that changed
        anything."""
        protocol = self._load(Protocol.id_for(listing.protocol), working)
        if protocol is None:
            return self._list(listing, working), True
        assert isinstance(protocol, Protocol)
        return protocol, self._update_details(protocol, listing)

    @staticmethod
    def _list(listing: Listing, working: dict[UUID, Aggregate]) -> Protocol:
        if not listing.name:
            raise ProtocolNotFound(listing.protocol)
        protocol = Protocol.create(
            slug=listing.protocol,
            name=listing.name,
            category=listing.category or "",
            chains=list(listing.chains or ()),
            url=listing.url or "",
            observed_at=listing.observed_at,
            oracles=list(listing.oracles or ()),
        )
        working[protocol.id] = protocol
        return protocol

    @staticmethod
    def _update_details(protocol: Protocol, listing: Listing) -> bool:
        return protocol.update_details(
            name=listing.name,
            category=listing.category,
            chains=list(listing.chains) if listing.chains is not None else None,
            url=listing.url,
            observed_at=listing.observed_at,
            oracles=None if listing.oracles is None else list(listing.oracles),
        )

    # -- protocols ------------------------------------------------------------------------

    def get_protocol(self, slug: str) -> Protocol:
        return self._get_fresh(Protocol.id_for(slug), Protocol, ProtocolNotFound(slug))

    def update_protocol(
        self,
        slug: str,
        name: str | None = None,
        category: str | None = None,
        chains: list[str] | None = None,
        url: str | None = None,
    ) -> bool:
        protocol = self._get_cached(Protocol.id_for(slug), Protocol, ProtocolNotFound(slug))
        changed = protocol.update_details(name=name, category=category, chains=chains, url=url)
        if changed:
            self._save_or_evict(protocol)
        return changed

    # -- accounts and API keys -----------------------------------------------------------

    def open_account(self, name: str = "", contact: str = "") -> UUID:
        """A new account (its own id, whatever its name)."""
        account = Account.open(name, contact)
        self.save(account)
        return account.id

    def get_account(self, account_id: UUID) -> Account:
        """The account ``account_id``; a legacy account (keys issued before accounts) is
        adopted on the way, keeping the owner its keys had. ``AccountNotFound``."""
        try:
            return self._get_fresh(account_id, Account, AccountNotFound(account_id))
        except AccountNotFound:
            legacy = self._legacy_owner(account_id)
            if legacy is None:
                raise
        account = Account.adopt(legacy)
        try:
            self.save(account)
        except IntegrityError:  # adopted meanwhile by another command: the same account
            return self._get_fresh(account_id, Account, AccountNotFound(account_id))
        return account

    def _legacy_owner(self, account_id: UUID) -> str | None:
        for key in self.api_keys():
            if key.account_id == account_id and key.owner != str(account_id):
                return key.owner
        return None

    def accounts(self) -> list[Account | UUID]:
        """Every account: the opened ones, and the ids of legacy accounts not adopted yet."""
        opened = [
            self._get_fresh(aggregate_id, Account, AccountNotFound(aggregate_id))
            for aggregate_id in self._originators(Account, "Opened")
        ]
        found: list[Account | UUID] = list(opened)
        known = {account.id for account in opened}
        for key in self.api_keys():
            if key.account_id not in known:
                known.add(key.account_id)
                found.append(key.account_id)
        return found

    def issue_api_key(
        self,
        name: str,
        tier: str = "free",
        *,
        account_id: UUID | None = None,
        allowed_ips: Sequence[str] = (),
    ) -> str:
        """Issue a key of ``account_id`` (of a new account named ``name`` when None) and
        return its secret (shown once; only its hash is stored). ``AccountNotFound``."""
        secret = "drt_" + secrets.token_urlsafe(32)
        if account_id is None:
            account = Account.open(name)
            key = ApiKey.issue(secret, name, account, tier, allowed_ips)
            listing = KeyListing(account_id=str(account.id))
            listing.add(key.id)
            self.save_aggregates([account, key, listing])
            return secret
        account = self.get_account(account_id)
        if account.erased:
            raise AccountErased(account_id)
        key = ApiKey.issue(secret, name, account, tier, allowed_ips)

        def issue(working: dict[UUID, Aggregate]) -> str:
            listing = self._account_key_listing(account.id)
            working[listing.id] = listing
            listing.add(key.id)
            self.save_aggregates([key, listing])
            return secret

        return self._retrying(issue)

    def account_keys(self, account_id: UUID) -> list[ApiKey] | None:
        """The keys of ``account_id`` in the order they were issued (one lookup plus one per
        key); None when the account's listing was never made (``index_account_keys``)."""
        try:
            listing = self._get_fresh(KeyListing.id_for(account_id), KeyListing, LookupError())
        except LookupError:
            return None
        return [self._get_fresh(UUID(key), ApiKey, ApiKeyNotFound()) for key in listing.keys]

    def index_account_keys(self, account_id: UUID) -> None:
        """Make the key listing of an account whose keys predate listings (a scan, once)."""

        def index(working: dict[UUID, Aggregate]) -> None:
            listing = self._account_key_listing(account_id)
            working[listing.id] = listing
            if listing.pending_events:
                self.save(listing)

        self._retrying(index)

    def _account_key_listing(self, account_id: UUID) -> KeyListing:
        try:
            return self._get_cached(KeyListing.id_for(account_id), KeyListing, LookupError())
        except LookupError:
            # Keys issued before listings existed: found by a scan, this once.
            earlier = [str(key.id) for key in self.api_keys(account_id)]
            return KeyListing(account_id=str(account_id), keys=earlier)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key for ``secret`` if it works now (not revoked, not past its grace)."""
        key = self.find_api_key(ApiKey.id_for(hash_key(secret)))
        return key if key is not None and key.usable(time.time()) else None

    def find_api_key(self, key_id: UUID) -> ApiKey | None:
        """The key ``key_id`` as stored now (revoked and rotated ones too), or None."""
        try:
            return self._get_fresh(key_id, ApiKey, ApiKeyNotFound())
        except ApiKeyNotFound:
            return None

    def api_keys(self, account_id: UUID | None = None) -> list[ApiKey]:
        """The keys (of ``account_id``), in the order they were issued, secrets never kept."""
        keys = [
            self._get_fresh(key_id, ApiKey, ApiKeyNotFound())
            for key_id in self._originators(ApiKey, "Issued")
        ]
        return [key for key in keys if account_id is None or key.account_id == account_id]

    def _api_key(self, key: str) -> ApiKey:
        """The key given as its secret, its SHA-256 hash or its id. ``ApiKeyNotFound``."""
        try:
            key_id = UUID(key)
        except ValueError:
            key_id = ApiKey.id_for(key if len(key) == 64 else hash_key(key))
        return self._get_cached(key_id, ApiKey, ApiKeyNotFound())

    def revoke_api_key(self, key: str) -> UUID:
        """Revoke a key (its secret, hash or id); returns its id."""
        found = self._api_key(key)
        found.revoke()
        self._save_or_evict(found)
        return found.id

    def rotate_api_key(self, key: str, grace: float) -> str:
        """A new key of the same account, name, tier and allow-list; the old one keeps
        working for ``grace`` seconds. Returns the new secret (shown once)."""
        old = self._api_key(key)
        account = self.get_account(old.account_id)
        secret = "drt_" + secrets.token_urlsafe(32)
        new = ApiKey.issue(secret, old.name, account, old.tier, old.allowed_ips)
        old.rotate_out(time.time() + max(0.0, grace))
        working: dict[UUID, Aggregate] = {old.id: old}
        try:
            listing = self._account_key_listing(account.id)
            working[listing.id] = listing
            listing.add(new.id)
            self.save_aggregates([old, new, listing])
        except BaseException:
            self._evict(working)
            raise
        return secret

    def close_account(self, account_id: UUID, rule_ids: Sequence[str] = ()) -> ClosedAccount:
        """The first half of an erase (``privacy.AccountPrivacy``): revoke every key of the
        account, delete its live rules (those of its rule book and ``rule_ids``, the rules
        the read model lists for it), close its subscriptions and record it ``Erased``.
        An account erased already records nothing more (what it names is returned, for the
        stores to be purged again). ``AccountNotFound``."""
        account = self.get_account(account_id)
        owner = account.owner
        keys = self.api_keys(account_id)
        if account.erased:
            return ClosedAccount(
                account_id, owner, tuple(key.id for key in keys), 0, tuple(rule_ids), 0, ()
            )
        revoked = 0
        for key in keys:
            if not key.revoked:
                self.revoke_api_key(str(key.id))
                revoked += 1
        try:
            book = self._get_fresh(RuleBook.id_for(owner), RuleBook, LookupError())
            rules = sorted(set(book.rules) | set(rule_ids))
        except LookupError:
            rules = sorted(set(rule_ids))
        deleted = 0
        for rule_id in rules:
            with contextlib.suppress(AlertRuleNotFound, ValueError):
                self.delete_alert_rule(UUID(rule_id), owner)
                deleted += 1
        subscriptions = self.list_subscriptions(owner)
        for subscription in subscriptions:
            with contextlib.suppress(SubscriptionNotFound):
                self.close_subscription(subscription.id, owner)
        account = self._get_fresh(account_id, Account, AccountNotFound(account_id))
        account.erase()
        self.save(account)
        return ClosedAccount(
            account_id=account_id,
            owner=owner,
            key_ids=tuple(key.id for key in keys),
            keys_revoked=revoked,
            rule_ids=tuple(rules),
            rules_deleted=deleted,
            subscription_ids=tuple(subscription.id for subscription in subscriptions),
        )

    def forget_personal_fields(self, closed: ClosedAccount) -> None:
        """Drop what this process holds of a closed account's personal fields once its key
        is destroyed: the mapper's cached key, and the cached aggregates that hold the
        fields opened (they load redacted from now on)."""
        if isinstance(self.mapper, PersonalFieldsMapper):
            self.mapper.forget(closed.owner)
        held: list[UUID] = [
            closed.account_id,
            *closed.key_ids,
            RuleBook.id_for(closed.owner),
            SubscriptionBook.id_for(closed.owner),
        ]
        for rule_id in closed.rule_ids:
            with contextlib.suppress(ValueError):
                held.append(UUID(rule_id))
        held.extend(closed.subscription_ids)
        self._evict(held)

    def _originators(self, kind: type[Aggregate], created: str) -> list[UUID]:
        """The ids of the ``kind`` aggregates (their creation event: ``created``), in log
        order (a topic-filtered scan: for operator commands, not for requests)."""
        topic = get_topic(getattr(kind, created))
        ids: list[UUID] = []
        start = 0
        while True:
            page = self.recorder.select_notifications(
                start=start, limit=1_000, topics=[topic], inclusive_of_start=False
            )
            ids.extend(UUID(str(notification.originator_id)) for notification in page)
            if len(page) < 1_000:
                return ids
            start = page[-1].id

    # -- alert rules ----------------------------------------------------------------------

    def create_alert_rule(
        self,
        owner: str,
        target: RuleTarget | Mapping[str, Any],
        condition: Condition | Mapping[str, Any],
        channels: Sequence[Any],
        cooldown: int = 3_600,
        name: str = "",
        *,
        limit: int | None = None,
        existing: Callable[[], Sequence[str]] = tuple,
    ) -> UUID:
        """Create a rule; its target must be known: a listed protocol, or a token with a
        recorded price (a typo in a slug or a coin id must not create a rule that can never
        fire), and the owner may hold at most
        ``limit`` live rules (checked in the owner's ``RuleBook``, saved in the same
        transaction as the rule: concurrent creations cannot both take the last place).
        ``existing`` lists the owner's rules for a book opened the first time (owners whose
        rules predate books). Raises ``InvalidRule``, ``ProtocolNotFound``,
        ``TokenNotFound`` or ``RuleQuotaExceeded``."""
        rule = AlertRule.create(owner, target, condition, channels, cooldown, name)
        if isinstance(rule.target, ProtocolTarget):
            slug = rule.target.protocol
            self._get_cached(Protocol.id_for(slug), Protocol, ProtocolNotFound(slug))
        elif isinstance(rule.target, TokenTarget):
            # A token exists once a price was recorded for it (any spelling of an EVM
            # address: the id is canonical on both sides).
            token = rule.target.token
            self._get_cached(Token.id_for(token), Token, TokenNotFound(token))

        def admit(working: dict[UUID, Aggregate]) -> UUID:
            book = self._rule_book(owner, working, existing)
            book.admit(rule.id, sys.maxsize if limit is None else limit)
            self.save_aggregates([book, rule])
            return rule.id

        return self._retrying(admit)

    def _rule_book(
        self,
        owner: str,
        working: dict[UUID, Aggregate],
        existing: Callable[[], Sequence[str]],
    ) -> RuleBook:
        book_id = RuleBook.id_for(owner)
        try:
            book = self._get_cached(book_id, RuleBook, LookupError())
        except LookupError:
            book = RuleBook.open(owner, existing())
        working[book_id] = book
        return book

    def get_alert_rule(self, rule_id: UUID, owner: str) -> AlertRule:
        """A rule of ``owner``'s; another owner's rule is reported as not found."""
        rule = self._get_fresh(rule_id, AlertRule, AlertRuleNotFound(rule_id))
        if rule.owner != owner or rule.state == "deleted":
            raise AlertRuleNotFound(rule_id)
        return rule

    def _owned_rule(self, rule_id: UUID, owner: str) -> AlertRule:
        rule = self._get_cached(rule_id, AlertRule, AlertRuleNotFound(rule_id))
        if rule.owner != owner or rule.state == "deleted":
            raise AlertRuleNotFound(rule_id)
        return rule

    def update_alert_rule(self, rule_id: UUID, owner: str, **changes: Any) -> None:
        """Replace parts of a rule (``AlertRule.update``: its target cannot change)."""
        rule = self._owned_rule(rule_id, owner)
        if rule.update(**changes):
            self._save_or_evict(rule)

    def pause_alert_rule(self, rule_id: UUID, owner: str) -> None:
        rule = self._owned_rule(rule_id, owner)
        rule.pause()
        self._save_or_evict(rule)

    def resume_alert_rule(self, rule_id: UUID, owner: str) -> None:
        rule = self._owned_rule(rule_id, owner)
        rule.resume()
        self._save_or_evict(rule)

    def delete_alert_rule(self, rule_id: UUID, owner: str) -> None:
        """Delete a rule; it leaves its owner's book (a place for a new rule)."""

        def delete(working: dict[UUID, Aggregate]) -> None:
            rule = self._owned_rule(rule_id, owner)
            working[rule.id] = rule
            rule.delete()
            changed: list[Aggregate] = [rule]
            try:
                book = self._get_cached(RuleBook.id_for(owner), RuleBook, LookupError())
            except LookupError:
                pass  # rules that predate books: the book starts from the listing
            else:
                working[book.id] = book
                book.release(rule_id)
                changed.append(book)
            self.save_aggregates([aggregate for aggregate in changed if aggregate.pending_events])

        self._retrying(delete)

    def observe_alert_rules(self, observations: Sequence[RuleObservation]) -> list[RuleSnapshot]:
        """Evaluate rules against measures and save every transition in one transaction.

        Meant for the alert evaluator, on the writer thread. Each observation carries its
        log position, so observations a rule already evaluated (a replay after a crash)
        record nothing. Returns each rule's state right after each observation; rules that
        no longer exist come back as ``deleted``.
        """

        def observe(working: dict[UUID, Aggregate]) -> list[RuleSnapshot]:
            snapshots: list[RuleSnapshot] = []
            for observation in observations:
                rule = self._rule_for_evaluation(UUID(observation.rule_id), working)
                if rule is None:
                    snapshots.append(
                        RuleSnapshot(observation.rule_id, None, "deleted", "resolved", None)
                    )
                    continue
                transition = rule.observe(
                    observation.measure, observation.observed_at, observation.position
                )
                snapshots.append(
                    RuleSnapshot(
                        observation.rule_id,
                        transition,
                        rule.state,
                        rule.firing,
                        rule.last_fired_at,
                        rule.transitions,
                    )
                )
            changed = [rule for rule in working.values() if rule.pending_events]
            if changed:
                self.save_aggregates(changed)
            return snapshots

        # Another node may have changed one of the rules (e.g. paused it): a conflict
        # starts over from the stored events; the positions keep the retry from
        # double-counting.
        return self._retrying(observe)

    def _rule_for_evaluation(
        self, rule_id: UUID, working: dict[UUID, Aggregate]
    ) -> AlertRule | None:
        rule = working.get(rule_id)
        if rule is None:
            try:
                rule = self.repository.get(rule_id)  # cached: we are the writer thread
            except AggregateNotFoundError:
                return None
            working[rule_id] = rule
        return rule if isinstance(rule, AlertRule) else None

    # -- on-chain collection -------------------------------------------------------------

    def evm_chain(self, chain_id: int) -> EvmChain | None:
        """The collector state of ``chain_id`` (None: never opened). Writer thread only."""
        try:
            found: Aggregate = self.repository.get(EvmChain.id_for(chain_id))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, EvmChain) else None

    def record_chain_step(self, step: ChainStep) -> int:
        """Apply one collector step in ONE transaction: open the chain, or orphan blocks
        and retract the protocols' observations they carried, or record new blocks with
        their facts and the TVL observations they gave (an ``IngestBatch``, applied as
        every ingest is). The new head position (0: nothing recorded). Writer thread only."""

        def apply(working: dict[UUID, Aggregate]) -> int:
            self._absent.clear()
            self._preloaded.clear()
            # Per attempt, as ingest's: a retraction may name a time beyond the window.
            self._observations = GroupObservations(self._stored_events_of, self.mapper)
            try:
                return record(working)
            finally:
                self._absent.clear()
                self._preloaded.clear()

        def record(working: dict[UUID, Aggregate]) -> int:
            chain_id = EvmChain.id_for(step.chain_id)
            chain = self._load(chain_id, working)
            if chain is None:
                if step.opening is None:
                    raise LookupError(f"EVM chain {step.chain_id} was never opened")
                chain = step.opening()
                working[chain_id] = chain
            assert isinstance(chain, EvmChain)
            if step.orphan_from is not None:
                for restored in chain.orphan_from(step.orphan_from):
                    protocol = self._load(Protocol.id_for(str(restored["protocol"])), working)
                    if isinstance(protocol, Protocol) and protocol.retract_metric(
                        "tvl",
                        str(restored["chain"]),
                        float(restored["observed_at"]),
                        float(restored["value"]),
                        step.source,
                        self._observations,
                    ):
                        # Later lookups of this group see the restored value.
                        retracted: Any = protocol.pending_events[-1]
                        self._observations.note(
                            protocol.id,
                            (retracted.metric, retracted.chain),
                            retracted.observed_at,
                            retracted.value,
                        )
            if step.blocks:
                chain.record_blocks(step.blocks, step.facts, step.reserves, step.tvl)
            if step.batch is not None:
                result = self._apply_batch(step.batch, working)
                if not result.committed:
                    raise ValueError(f"chain {step.chain_id}: observations refused: {result}")
            return max(
                self._save_group([a for a in working.values() if a.pending_events]), default=0
            )

        return self._retrying(apply)

    # -- anomalies ------------------------------------------------------------------------

    def record_anomalies(self, detections: Sequence[Detection]) -> int:
        """Save detections as ``AnomalyDetected`` events of their series' ``AnomalyLog``s,
        in one transaction; the number recorded. Meant for the anomaly follower, on the
        writer thread. A detection whose log position its series already handled (a replay
        after a crash, or a rebuild from position 0) records nothing."""

        def record(working: dict[UUID, Aggregate]) -> int:
            recorded = 0
            for detection in detections:
                log_id = AnomalyLog.id_for(detection.series)
                anomaly_log = working.get(log_id)
                if anomaly_log is None:
                    try:
                        anomaly_log = self.repository.get(log_id)
                    except AggregateNotFoundError:
                        anomaly_log = AnomalyLog.open(
                            detection.series, detection.subject, detection.measure
                        )
                    working[log_id] = anomaly_log
                assert isinstance(anomaly_log, AnomalyLog)
                recorded += anomaly_log.detect(
                    detection.observed_at,
                    detection.value,
                    detection.score,
                    detection.direction,
                    detection.reason,
                    detection.position,
                )
            changed = [log for log in working.values() if log.pending_events]
            if changed:
                self.save_aggregates(changed)
            return recorded

        return self._retrying(record)

    # -- MEV --------------------------------------------------------------------------------

    def record_mev(self, steps: Sequence[MevStep]) -> int:
        """Save the MEV follower's steps as ``MevDetected`` / ``MevRetracted`` events of
        their chains' ``MevLedger``s, in one transaction; the number of detections recorded
        plus retracted. Writer thread only. A step whose position its ledger already
        handled, or a retraction of blocks with nothing live, records nothing."""

        def record(working: dict[UUID, Aggregate]) -> int:
            done = 0
            for step in steps:
                ledger_id = MevLedger.id_for(step.chain_id)
                ledger = working.get(ledger_id)
                if ledger is None:
                    try:
                        ledger = self.repository.get(ledger_id)
                    except AggregateNotFoundError:
                        ledger = MevLedger.open(step.chain_id)
                    working[ledger_id] = ledger
                assert isinstance(ledger, MevLedger)
                if step.detections and ledger.detect(step.detections, step.position):
                    done += len(step.detections)
                if step.orphaned:
                    done += len(ledger.retract(step.orphaned))
            changed = [ledger for ledger in working.values() if ledger.pending_events]
            if changed:
                self.save_aggregates(changed)
            return done

        return self._retrying(record)

    # -- subscriptions --------------------------------------------------------------------

    def open_subscription(
        self,
        owner: str,
        channel: str,
        params: dict[str, Any] | None = None,
        *,
        name: str = "",
        position: int | None = None,
        limit: int | None = None,
        webhook: dict[str, str] | None = None,
    ) -> UUID:
        """Open a durable subscription of ``owner``'s, resuming after ``position`` (default:
        the log's head now: nothing older is news). ``name`` is unique among the owner's
        live subscriptions and the owner holds at most ``limit``: both checked in the
        owner's ``SubscriptionBook``, saved in the same transaction. ``webhook``
        (``{"url", "secret"?}``): delivered by POSTs to it, and entered in the
        ``WebhookDirectory`` in that transaction too. Raises ``InvalidSubscription``,
        ``SubscriptionNameTaken`` or ``SubscriptionQuotaExceeded``."""
        start = (self.recorder.max_notification_id() or 0) if position is None else position
        subscription = Subscription.open(
            owner,
            channel,
            params,
            "websocket" if webhook is None else "webhook",
            name=name,
            position=start,
            webhook=webhook,
        )

        def admit(working: dict[UUID, Aggregate]) -> UUID:
            book_id = SubscriptionBook.id_for(owner)
            try:
                book = self._get_cached(book_id, SubscriptionBook, LookupError())
            except LookupError:
                book = SubscriptionBook.open(owner)
            working[book_id] = book
            book.admit(subscription.id, name, sys.maxsize if limit is None else limit)
            admitted: list[Aggregate] = [book, subscription]
            if webhook is not None:
                directory = self._webhook_directory()
                working[directory.id] = directory
                directory.admit(subscription.id, owner)
                admitted.append(directory)
            self.save_aggregates(admitted)
            return subscription.id

        return self._retrying(admit)

    def get_subscription(self, subscription_id: UUID, owner: str) -> Subscription:
        """A live subscription of ``owner``'s; another owner's, or a closed one, is not
        found."""
        found = self._get_fresh(
            subscription_id, Subscription, SubscriptionNotFound(subscription_id)
        )
        if found.owner != owner or found.closed:
            raise SubscriptionNotFound(subscription_id)
        return found

    def list_subscriptions(self, owner: str) -> list[Subscription]:
        """``owner``'s live subscriptions, in the order they were opened."""
        try:
            book = self._get_fresh(SubscriptionBook.id_for(owner), SubscriptionBook, LookupError())
        except LookupError:
            return []
        found: list[Subscription] = []
        for subscription_id in book.subscriptions:
            with contextlib.suppress(SubscriptionNotFound):
                found.append(self.get_subscription(UUID(subscription_id), owner))
        return found

    def webhook_subscriptions(
        self, known: Collection[str] = ()
    ) -> tuple[list[str], list[Subscription]]:
        """The ids of every live webhook-delivered subscription, whoever owns it, oldest
        first, and those of them not ``known`` loaded (what the delivering loop walks: it
        keeps what it loaded, so a round reads the directory, not every subscription)."""
        try:
            directory = self._get_fresh(WEBHOOK_DIRECTORY_ID, WebhookDirectory, LookupError())
        except LookupError:
            return [], []
        loaded: list[Subscription] = []
        for subscription_id, owner in directory.subscriptions.items():
            if subscription_id not in known:
                with contextlib.suppress(SubscriptionNotFound):
                    loaded.append(self.get_subscription(UUID(subscription_id), owner))
        return list(directory.subscriptions), loaded

    def _webhook_directory(self) -> WebhookDirectory:
        try:
            return self._get_cached(WEBHOOK_DIRECTORY_ID, WebhookDirectory, LookupError())
        except LookupError:
            return WebhookDirectory()

    def advance_subscription(self, subscription_id: UUID, owner: str, position: int) -> None:
        subscription = self._get_cached(
            subscription_id, Subscription, SubscriptionNotFound(subscription_id)
        )
        if subscription.owner != owner:
            raise SubscriptionNotFound(subscription_id)
        if subscription.advance(position):
            self._save_or_evict(subscription)

    def advance_subscriptions(self, acknowledged: Mapping[UUID, tuple[str, int]]) -> set[UUID]:
        """Advance several subscriptions (id -> (owner, position)) in one transaction
        (acknowledgements gathered over a moment: one write, not one per frame). Returns
        the ids that are gone (closed, another owner's, or unknown): nothing is recorded
        for them."""

        def advance(working: dict[UUID, Aggregate]) -> set[UUID]:
            gone: set[UUID] = set()
            for subscription_id, (owner, position) in acknowledged.items():
                try:
                    subscription = self._get_cached(
                        subscription_id, Subscription, SubscriptionNotFound(subscription_id)
                    )
                except SubscriptionNotFound:
                    gone.add(subscription_id)
                    continue
                if subscription.owner != owner or subscription.closed:
                    gone.add(subscription_id)
                    continue
                working[subscription_id] = subscription
                subscription.advance(position)
            changed = [s for s in working.values() if s.pending_events]
            if changed:
                self.save_aggregates(changed)
            return gone

        return self._retrying(advance)

    def close_subscription(self, subscription_id: UUID, owner: str) -> None:
        """Close a subscription; its name becomes free again."""

        def close(working: dict[UUID, Aggregate]) -> None:
            subscription = self._get_cached(
                subscription_id, Subscription, SubscriptionNotFound(subscription_id)
            )
            if subscription.owner != owner or subscription.closed:
                raise SubscriptionNotFound(subscription_id)
            working[subscription_id] = subscription
            subscription.close()
            changed: list[Aggregate] = [subscription]
            try:
                book = self._get_cached(
                    SubscriptionBook.id_for(owner), SubscriptionBook, LookupError()
                )
            except LookupError:
                pass
            else:
                working[book.id] = book
                if book.release(subscription_id):
                    changed.append(book)
            if subscription.webhook is not None:
                directory = self._webhook_directory()
                working[directory.id] = directory
                if directory.release(subscription_id):
                    changed.append(directory)
            self.save_aggregates(changed)

        self._retrying(close)

    # -- reconciliation -------------------------------------------------------------------

    def record_reconciliation(self, run: Mapping[str, Any]) -> int:
        """Append a run's ``ReconciliationCompleted`` (its fields: ``ReconciliationLog.complete``'s
        arguments) to the reconciliation log; the number of runs recorded so far."""
        log: Aggregate
        try:
            log = self.repository.get(RECONCILIATION_LOG_ID)
        except AggregateNotFoundError:
            log = ReconciliationLog()
        if not isinstance(log, ReconciliationLog):  # pragma: no cover - a fixed, own id
            raise TypeError(f"aggregate {RECONCILIATION_LOG_ID} is not the reconciliation log")
        log.complete(**run)
        self._save_or_evict(log)
        return log.runs

    def latest_reconciliation(self) -> dict[str, Any] | None:
        """The last run's recorded fields (and ``run``: its number), or None before the first
        run. Reads the last stored event only: the log is never replayed for it."""
        stored = self.recorder.select_events(RECONCILIATION_LOG_ID, desc=True, limit=1)
        if not stored:
            return None
        found = self.mapper.to_domain_event(stored[0])
        # The event class ``@event`` made (declared by name, so not visible to mypy).
        completed: type = getattr(ReconciliationLog, "ReconciliationCompleted")  # noqa: B009
        if not isinstance(found, completed):
            return None  # only the log's opening: no run recorded yet
        fields = {
            name: value
            for name, value in vars(found).items()
            if name not in ("originator_id", "originator_version", "timestamp")
        }
        # The opening event is version 1: run n is version n + 1.
        return {**fields, "run": found.originator_version - 1}

    # -- helpers --------------------------------------------------------------------------

    def _get_cached(self, aggregate_id: UUID, kind: type[A], missing: Exception) -> A:
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise missing from None
        if not isinstance(aggregate, kind):
            raise missing
        return aggregate

    def _get_fresh(self, aggregate_id: UUID, kind: type[A], missing: Exception) -> A:
        try:
            aggregate: Aggregate = self.repository.get(aggregate_id, version=_LATEST)
        except AggregateNotFoundError:
            raise missing from None
        if not isinstance(aggregate, kind):
            raise missing
        return aggregate

    def _retrying(self, work: Callable[[dict[UUID, Aggregate]], T], attempts: int = 3) -> T:
        """Run ``work`` over a fresh working set of aggregates, again (from the stored
        events) when its save conflicts with another writer's; a failure evicts whatever it
        changed from the cache, so nothing unsaved is ever read back."""
        for attempt in range(attempts):
            working: dict[UUID, Aggregate] = {}
            try:
                return work(working)
            except IntegrityError:
                self._evict(working)
                if attempt + 1 == attempts:
                    raise
            except BaseException:
                self._evict(working)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _save_or_evict(self, aggregate: Aggregate) -> None:
        try:
            self.save(aggregate)
        except BaseException:
            self._evict({aggregate.id: aggregate})
            raise


def _owners(aggregates: Sequence[Aggregate], marks: Sequence[Mapping[int, int]]) -> list[int]:
    """The index of the batch that recorded each of ``aggregates``' pending events, in the
    order they are saved. ``marks[k]``: the pending events of each aggregate batch ``k``
    touched, counted after it, by the aggregate's ``id()`` (batches apply in order, so an
    aggregate's events are theirs in turn)."""
    after: dict[int, list[tuple[int, int]]] = {}
    for index, mark in enumerate(marks):
        for key, count in mark.items():
            after.setdefault(key, []).append((index, count))
    owners: list[int] = []
    for aggregate in aggregates:
        done = 0
        for index, count in after.get(id(aggregate), ()):
            if count > done:
                owners.extend(itertools.repeat(index, count - done))
                done = count
    return owners
