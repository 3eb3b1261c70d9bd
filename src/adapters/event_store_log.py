"""``EventLog`` over the application's event store: notifications -> ``LogEntry``s.

Two ways from a notification to a ``LogEntry``, with the same result:

* the general one: eventsourcing's mapper rebuilds the domain event object (topic
  resolution, JSON decoding with a Python ``object_hook`` per JSON object, originator ID
  conversion, upcasting), then ``to_entry`` flattens it;
* the fast one, for states stored as plain eventsourcing JSON (no cipher, no compressor,
  the stock ``JSONTranscoder``): decode the JSON with the C scanner and no hook, turn the
  one transcoded value every event has (``timestamp``, ``datetime_iso``) into a number,
  and flatten the decoded dict directly. Rebuilding objects only to read their attributes
  back was most of the cost of following the log (profiled at ~2/3 of ``read``); the fast
  path is 2-3x faster end to end, select included.

Anything the fast path does not recognise (another transcoded value, a ``class_version``
to upcast, a missing field, text originator IDs) falls back to the mapper, per
notification. tests/unit/test_event_log_fast_path.py checks that both ways agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    Notification,
)
from eventsourcing.utils import resolve_topic

from ..application.log import LogBatch, LogEntry
from ..domain.account import legacy_account_id
from ..domain.alert_rule import AlertRule, public_channels
from ..domain.anomaly import AnomalyLog
from ..domain.api_key import ApiKey
from ..domain.chains import canonical_chain
from ..domain.evm import EvmChain
from ..domain.mev import MevLedger
from ..domain.protocol import Protocol
from ..domain.token import Token, canonical_token_id
from .in_flight import Calls

# Translations read an event's fields from a mapping: the event object's ``vars()`` on the
# general path, the decoded JSON state (plus the originator ID) on the fast one. Both hold
# the very same values, so one definition serves both and they cannot drift apart.
_Translate = Callable[[Mapping[str, Any]], tuple[str, str, dict[str, Any]]]


def _listed(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return "protocol_listed", event["slug"], _listing_data(event)


def _updated(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return "protocol_updated", event["slug"], _listing_data(event)


def _listing_data(event: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": event["name"],
        "category": event["category"],
        # Canonical chain names, for events recorded before names were normalised too.
        "chains": list(dict.fromkeys(map(canonical_chain, event["chains"]))),
        "url": event["url"],
        # When the details were true (ADR 0017; None when unknown, and before it existed).
        "observed_at": event.get("observed_at"),
    }
    # Events stored before oracles were kept carry none: leaving the key out keeps what
    # the consumer holds (as the domain does), rather than saying "no oracles".
    oracles = event.get("oracles")
    if oracles is not None:
        data["oracles"] = list(oracles)
    return data


def _metric(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "metric",
        event["slug"],
        {
            "metric": event["metric"],
            "chain": canonical_chain(event["chain"]),
            "value": event["value"],
            "observed_at": event["observed_at"],
            "source": event["source"],
        },
    )


def _retracted(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    # Downstream a retraction is a correction at the same (metric, chain, observed_at):
    # every read model and stream already applies those (ADR 0048); ``retracted`` tells
    # clients why the value moved.
    kind, key, data = _metric(event)
    data["retracted"] = True
    return kind, key, data


def _evm_blocks(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "evm_blocks_recorded",
        str(event["chain_id"]),
        {"blocks": event["blocks"], "facts": event["facts"]},
    )


def _evm_orphaned(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "evm_blocks_orphaned",
        str(event["chain_id"]),
        {"from_number": event["from_number"], "blocks": event["blocks"]},
    )


def _mev_detected(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    fields = (
        "key", "kind", "block", "block_hash", "pool", "actor", "victim", "quote_token",
        "profit", "profit_quote", "profit_usd", "tx_hashes", "pools", "position",
    )  # fmt: skip
    return "mev_detected", str(event["chain_id"]), {name: event[name] for name in fields}


def _mev_retracted(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "mev_retracted",
        str(event["chain_id"]),
        {"block_hashes": event["block_hashes"], "keys": event["keys"]},
    )


def _price(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "price",
        # Prices recorded before token ids were canonical may spell an EVM address in mixed
        # case: downstream (projections, history, clients) sees one key per token.
        canonical_token_id(event["token_id"]),
        {
            "price": event["price"],
            "observed_at": event["observed_at"],
            "confidence": event["confidence"],
            "source": event["source"],
        },
    )


def _alert(kind: str) -> _Translate:
    def translate(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return (
            kind,
            str(event["originator_id"]),
            {
                "owner": event["owner"],
                "measure": event["measure"],
                "observed_at": event["observed_at"],
                "idempotency_key": event["idempotency_key"],
                # The kinds of channel the rule notified; None for a transition recorded
                # before they were (it went to the owner's sockets).
                "channel_kinds": event.get("channel_kinds"),
            },
        )

    return translate


def _rule_created(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "alert_rule_created",
        str(event["originator_id"]),
        {
            "owner": event["owner"],
            "name": event["name"],
            "target": dict(event["target"]),
            "condition": dict(event["condition"]),
            # Never the webhook secret: the log reaches other processes and brokers.
            "channels": public_channels(list(event["channels"])),
            "cooldown": event["cooldown"],
            "state": "active",
        },
    )


def _rule_updated(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "alert_rule_updated",
        str(event["originator_id"]),
        {
            "name": event["name"],
            "condition": dict(event["condition"]),
            "channels": public_channels(list(event["channels"])),
            "cooldown": event["cooldown"],
        },
    )


def _rule_state(kind: str, state: str) -> _Translate:
    def translate(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
        return kind, str(event["originator_id"]), {"state": state}

    return translate


def _anomaly(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "anomaly_detected",
        event["subject"],
        {
            "series": event["series"],
            "measure": event["measure"],
            "observed_at": event["observed_at"],
            "value": event["value"],
            "score": event["score"],
            "direction": event["direction"],
            "reason": event["reason"],
            "position": event["position"],
        },
    )


def _key_issued(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    # Keys issued before accounts name no account: theirs is derived from the owner.
    account = event.get("account_id") or str(legacy_account_id(event["owner"]))
    return "api_key_issued", str(event["originator_id"]), {"account_id": str(account)}


def _key_revoked(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return "api_key_revoked", str(event["originator_id"]), {}


def _key_rotated_out(event: Mapping[str, Any]) -> tuple[str, str, dict[str, Any]]:
    return (
        "api_key_rotated_out",
        str(event["originator_id"]),
        {"grace_until": float(event["grace_until"])},
    )


# Keyed by the event class's qualified name (``@event("Listed")`` makes ``Protocol.Listed``).
TRANSLATIONS: Mapping[str, _Translate] = {
    f"{Protocol.__name__}.Listed": _listed,
    f"{Protocol.__name__}.DetailsUpdated": _updated,
    f"{Protocol.__name__}.MetricRecorded": _metric,
    f"{Protocol.__name__}.MetricRetracted": _retracted,
    f"{EvmChain.__name__}.BlocksRecorded": _evm_blocks,
    f"{EvmChain.__name__}.BlocksOrphaned": _evm_orphaned,
    f"{Token.__name__}.PriceRecorded": _price,
    f"{AlertRule.__name__}.Triggered": _alert("alert_triggered"),
    f"{AlertRule.__name__}.Resolved": _alert("alert_resolved"),
    f"{AlertRule.__name__}.Created": _rule_created,
    f"{AlertRule.__name__}.Updated": _rule_updated,
    f"{AlertRule.__name__}.Paused": _rule_state("alert_rule_paused", "paused"),
    f"{AlertRule.__name__}.Resumed": _rule_state("alert_rule_resumed", "active"),
    f"{AlertRule.__name__}.Deleted": _rule_state("alert_rule_deleted", "deleted"),
    f"{AnomalyLog.__name__}.AnomalyDetected": _anomaly,
    f"{MevLedger.__name__}.MevDetected": _mev_detected,
    f"{MevLedger.__name__}.MevRetracted": _mev_retracted,
    f"{ApiKey.__name__}.Issued": _key_issued,
    f"{ApiKey.__name__}.Revoked": _key_revoked,
    f"{ApiKey.__name__}.RotatedOut": _key_rotated_out,
}


def to_entry(position: int, event: DomainEventProtocol[Any]) -> LogEntry | None:
    """The downstream view of a domain event, or None if nobody downstream needs it."""
    translate = TRANSLATIONS.get(type(event).__qualname__)
    if translate is None:
        return None
    kind, key, data = translate(vars(event))
    return LogEntry(
        position=position,
        kind=kind,
        key=key,
        data=data,
        recorded_at=cast(Any, event).timestamp.timestamp(),
    )


# --- the fast path ------------------------------------------------------------------------

# ``raw_decode`` is the documented entry to the C scanner; ``json.loads`` adds whitespace
# regex matches per call, and eventsourcing's decoder a Python object_hook per JSON object.
_DECODER: Final = json.JSONDecoder()
_TYPE_MARK: Final = b'"_type_"'
_DATETIME_ISO: Final = DatetimeAsISO.name


def plain_json_states(mapper: Mapper[Any]) -> bool:
    """Whether ``mapper`` stores states as plain eventsourcing JSON (fast path possible)."""
    transcoder = mapper.transcoder
    return (
        mapper.cipher is None
        and mapper.compressor is None
        # Exactly the stock classes: a subclass may decode differently.
        and type(transcoder) is JSONTranscoder
        and type(transcoder.names.get(_DATETIME_ISO)) is DatetimeAsISO
    )


def fast_entry(notification: Notification, translate: _Translate) -> LogEntry | None:
    """The entry for ``notification`` straight from its JSON state; None if unsure.

    None means "use the mapper": the state holds something the mapper would transform
    (a transcoded value other than the timestamp, a class version to upcast), a field is
    missing, or the originator ID is not a UUID object (the mapper would convert it).
    """
    state = notification.state
    # eventsourcing marks every transcoded value with a "_type_" key; the timestamp is
    # the only one expected. A string value cannot contain the mark (its quotes would be
    # escaped), so one occurrence means nothing else needs the transcoder.
    if state.count(_TYPE_MARK) != 1 or not isinstance(notification.originator_id, UUID):
        return None
    try:
        text = state.decode()
        fields, end = _DECODER.raw_decode(text)
        stamp = fields["timestamp"]
        if (
            end != len(text)  # trailing text: let the mapper decide what it means
            or type(fields) is not dict
            or "class_version" in fields
            or type(stamp) is not dict
            or stamp.get("_type_") != _DATETIME_ISO
        ):
            return None
        recorded_at = datetime.fromisoformat(stamp["_data_"]).timestamp()
        fields["originator_id"] = notification.originator_id
        kind, key, data = translate(fields)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return LogEntry(
        position=notification.id, kind=kind, key=key, data=data, recorded_at=recorded_at
    )


class EventStoreLog:
    """Reads the application's notification log (synchronous; call from a thread).

    ``close`` waits for the reads under way and refuses later ones: a read still running in
    a worker thread after its task was cancelled must not meet a closed store (SQLite
    crashes the process on that)."""

    def __init__(self, app: Application[UUID], *, fast: bool = True) -> None:
        self._recorder = app.recorder
        self._mapper = app.mapper
        self._fast = fast and plain_json_states(app.mapper)
        # topic -> its translation, None for facts nobody downstream needs.
        self._translations: dict[str, _Translate | None] = {}
        self._calls = Calls("the event log reader")

    def read(self, after: int, limit: int) -> LogBatch:
        with self._calls.call():
            notifications = self._recorder.select_notifications(
                start=after, limit=limit, inclusive_of_start=False
            )
        if not notifications:
            return LogBatch(after=after, last=after)
        entries = []
        for notification in notifications:
            entry = self._entry(notification)
            if entry is not None:
                entries.append(entry)
        return LogBatch(after=after, last=notifications[-1].id, entries=tuple(entries))

    def head(self) -> int:
        with self._calls.call():
            return self._recorder.max_notification_id() or 0

    def close(self) -> None:
        """Refuse new reads and wait (bounded) for those under way to end."""
        self._calls.close()

    def _entry(self, notification: Notification) -> LogEntry | None:
        topic = notification.topic
        try:
            translate = self._translations[topic]
        except KeyError:
            # Resolved once per topic (aliases from ``register_topic`` included); an
            # unknown topic raises here just as the mapper would.
            translate = TRANSLATIONS.get(resolve_topic(topic).__qualname__)
            self._translations[topic] = translate
        if translate is None:
            return None  # not needed downstream: no need to decode it either
        if self._fast:
            entry = fast_entry(notification, translate)
            if entry is not None:
                return entry
        return to_entry(notification.id, self._mapper.to_domain_event(notification))
