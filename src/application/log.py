"""What flows out of the event store: flattened, serialisable facts with their position.

Projections, the fan-out and WebSocket clients see the event log as ``LogBatch``es: each
covers a contiguous range of global positions ``(after, last]`` and carries the entries of
that range that matter downstream (facts nobody downstream needs, such as accounts being opened, are
left out but their positions are still covered). A consumer that has applied everything up to
``after`` can apply the batch; anything else is a gap or a duplicate it can detect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

EntryKind = Literal[
    "protocol_listed",
    "protocol_updated",
    "metric",
    "price",
    "alert_triggered",
    "alert_resolved",
    "alert_rule_created",
    "alert_rule_updated",
    "alert_rule_paused",
    "alert_rule_resumed",
    "alert_rule_deleted",
    "anomaly_detected",
    "api_key_issued",
    "api_key_revoked",
    "api_key_rotated_out",
    "evm_blocks_recorded",
    "evm_blocks_orphaned",
    "mev_detected",
    "mev_retracted",
]
# An alert rule's lifecycle, in the order a rule can live it (consumers that do not follow
# rules, such as the hot projections and the realtime hub, ignore these kinds).
ALERT_RULE_KINDS: Final[tuple[str, ...]] = (
    "alert_rule_created",
    "alert_rule_updated",
    "alert_rule_paused",
    "alert_rule_resumed",
    "alert_rule_deleted",
)
# An API key's life (key: the key's id): every node forgets what it cached about the key
# and closes its sockets when it is revoked (docs/adr/0039).
API_KEY_KINDS: Final[tuple[str, ...]] = ("api_key_issued", "api_key_revoked", "api_key_rotated_out")
# What an EVM collector recorded (key: the chain id): ``evm_blocks_recorded``: ``blocks``
# (``number``, ``hash``, ``parent_hash``, ``timestamp``) and ``facts`` (decoded logs:
# ``kind`` swap/sync/mint/burn/transfer with ``block``, ``block_hash``, ``tx_hash``,
# ``tx_index``, ``log_index``, ``address``...); ``evm_blocks_orphaned``: ``from_number`` and
# the ``blocks`` (``number``, ``hash``) a reorg replaced: every fact of those block hashes is
# retracted (docs/adr/0048).
EVM_KINDS: Final[tuple[str, ...]] = ("evm_blocks_recorded", "evm_blocks_orphaned")
# What the MEV follower recorded (key: the chain id): ``mev_detected`` (a sandwich or cyclic
# arbitrage, ``MevFinding.to_json`` and the ``position`` of the collector entry behind it);
# ``mev_retracted``: the detection ``keys`` a reorg retracted (docs/adr/0050).
MEV_KINDS: Final[tuple[str, ...]] = ("mev_detected", "mev_retracted")
ENTRY_KINDS: Final[frozenset[str]] = frozenset(
    {"protocol_listed", "protocol_updated", "metric", "price", "alert_triggered", "alert_resolved"}
    | set(ALERT_RULE_KINDS)
    | {"anomaly_detected"}
    | set(API_KEY_KINDS)
    | set(EVM_KINDS)
    | set(MEV_KINDS)
)


class LogGapError(RuntimeError):
    """A consumer was handed a batch that starts beyond its position: positions are missing."""

    def __init__(self, position: int, batch_after: int) -> None:
        super().__init__(f"log gap: consumer is at {position}, batch starts after {batch_after}")
        self.position = position
        self.batch_after = batch_after


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One recorded fact.

    ``key`` is the protocol slug, token id or alert rule id. ``data`` holds the event's
    attributes, e.g. for ``metric``: ``metric``, ``chain``, ``value``, ``observed_at``,
    ``source``; for ``price``: ``price``, ``observed_at``, ``confidence``; for
    ``protocol_listed``/``protocol_updated``: ``name``, ``category``, ``chains``, ``url``,
    ``oracles`` (absent from events recorded before oracles were kept), ``observed_at``;
    for alerts: ``owner``, ``measure``, ``observed_at``, ``idempotency_key``,
    ``channel_kinds`` (None before they were recorded); for the
    rule lifecycle (key: the rule id), ``alert_rule_created``: ``owner``, ``name``,
    ``target``, ``condition``, ``channels``, ``cooldown``, ``state``; ``alert_rule_updated``:
    ``name``, ``condition``, ``channels``, ``cooldown``; ``alert_rule_paused`` /
    ``_resumed`` / ``_deleted``: ``state``; ``anomaly_detected`` (key: the protocol slug or
    token id): ``series``, ``measure``, ``observed_at``, ``value``, ``score``,
    ``direction``, ``reason``, ``position`` (of the observation behind it). Channels are
    listed without their secrets: a webhook secret never leaves the event store. For API
    keys (key: the key's id, never its hash), ``api_key_issued``: ``account_id``;
    ``api_key_revoked``: nothing; ``api_key_rotated_out``: ``grace_until`` (unix seconds).
    """

    position: int
    kind: str
    key: str
    data: Mapping[str, Any]
    recorded_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kind": self.kind,
            "key": self.key,
            "data": dict(self.data),
            "recorded_at": self.recorded_at,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LogEntry:
        return cls(
            position=int(raw["position"]),
            kind=str(raw["kind"]),
            key=str(raw["key"]),
            data=dict(raw["data"]),
            recorded_at=float(raw["recorded_at"]),
        )


@dataclass(frozen=True, slots=True)
class LogBatch:
    """Entries of the log positions ``after + 1 .. last`` (inclusive), in position order."""

    after: int
    last: int
    entries: tuple[LogEntry, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.last < self.after:
            raise ValueError(f"batch range is backwards: ({self.after}, {self.last}]")

    def since(self, position: int) -> LogBatch:
        """The part of this batch after ``position`` (for consumers that saw a prefix)."""
        if position <= self.after:
            return self
        return LogBatch(
            after=position,
            last=max(position, self.last),
            entries=tuple(entry for entry in self.entries if entry.position > position),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "last": self.last,
            "entries": [entry.to_json() for entry in self.entries],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LogBatch:
        return cls(
            after=int(raw["after"]),
            last=int(raw["last"]),
            entries=tuple(LogEntry.from_json(entry) for entry in raw["entries"]),
        )


def pending(batch: LogBatch, position: int) -> LogBatch | None:
    """The part of ``batch`` a consumer at ``position`` still has to apply.

    None for a replay (nothing new); raises ``LogGapError`` when positions are missing.
    """
    if batch.last <= position:
        return None
    if batch.after > position:
        raise LogGapError(position, batch.after)
    return batch.since(position)
