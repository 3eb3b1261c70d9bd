"""``EventLog`` over the application's event store: notifications -> ``LogEntry``s."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import DomainEventProtocol

from ..domain.alert_rule import AlertRule
from ..domain.protocol import Protocol
from ..domain.token import Token
from .log import LogBatch, LogEntry

_Translate = Callable[[Any], tuple[str, str, dict[str, Any]]]


def _listed(event: Any) -> tuple[str, str, dict[str, Any]]:
    return "protocol_listed", event.slug, _listing_data(event)


def _updated(event: Any) -> tuple[str, str, dict[str, Any]]:
    return "protocol_updated", event.slug, _listing_data(event)


def _listing_data(event: Any) -> dict[str, Any]:
    return {
        "name": event.name,
        "category": event.category,
        "chains": list(event.chains),
        "url": event.url,
    }


def _metric(event: Any) -> tuple[str, str, dict[str, Any]]:
    return (
        "metric",
        event.slug,
        {
            "metric": event.metric,
            "chain": event.chain,
            "value": event.value,
            "observed_at": event.observed_at,
            "source": event.source,
        },
    )


def _price(event: Any) -> tuple[str, str, dict[str, Any]]:
    return (
        "price",
        event.token_id,
        {
            "price": event.price,
            "observed_at": event.observed_at,
            "confidence": event.confidence,
            "source": event.source,
        },
    )


def _alert(kind: str) -> _Translate:
    def translate(event: Any) -> tuple[str, str, dict[str, Any]]:
        return (
            kind,
            str(event.originator_id),
            {
                "owner": event.owner,
                "measure": event.measure,
                "observed_at": event.observed_at,
                "idempotency_key": event.idempotency_key,
            },
        )

    return translate


# Keyed by the event class's qualified name (``@event("Listed")`` makes ``Protocol.Listed``).
TRANSLATIONS: Mapping[str, _Translate] = {
    f"{Protocol.__name__}.Listed": _listed,
    f"{Protocol.__name__}.DetailsUpdated": _updated,
    f"{Protocol.__name__}.MetricRecorded": _metric,
    f"{Token.__name__}.PriceRecorded": _price,
    f"{AlertRule.__name__}.Triggered": _alert("alert_triggered"),
    f"{AlertRule.__name__}.Resolved": _alert("alert_resolved"),
}


def to_entry(position: int, event: DomainEventProtocol[Any]) -> LogEntry | None:
    """The downstream view of a domain event, or None if nobody downstream needs it."""
    translate = TRANSLATIONS.get(type(event).__qualname__)
    if translate is None:
        return None
    kind, key, data = translate(event)
    return LogEntry(
        position=position,
        kind=kind,
        key=key,
        data=data,
        recorded_at=cast(Any, event).timestamp.timestamp(),
    )


class EventStoreLog:
    """Reads the application's notification log (synchronous; call from a thread)."""

    def __init__(self, app: Application[UUID]) -> None:
        self._recorder = app.recorder
        self._mapper = app.mapper

    def read(self, after: int, limit: int) -> LogBatch:
        notifications = self._recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        if not notifications:
            return LogBatch(after=after, last=after)
        entries = []
        for notification in notifications:
            entry = to_entry(notification.id, self._mapper.to_domain_event(notification))
            if entry is not None:
                entries.append(entry)
        return LogBatch(after=after, last=notifications[-1].id, entries=tuple(entries))

    def head(self) -> int:
        return self._recorder.max_notification_id() or 0
