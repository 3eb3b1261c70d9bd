"""The Subscription aggregate: a durable, owned stream subscription a client can resume."""

from __future__ import annotations

from typing import Any, Final

from eventsourcing.domain import Aggregate, event

from .errors import InvalidTransition
from .observations import check_label

CHANNELS: Final[frozenset[str]] = frozenset(
    {"protocols", "prices", "volumes", "alerts", "anomalies"}
)


class InvalidSubscription(InvalidTransition):
    """The subscription's channel or filter is not acceptable."""


class Subscription(Aggregate):
    """A client's subscription: channel + filter + delivery, with a resume position."""

    @event("Opened")
    def __init__(self, owner: str, channel: str, params: dict[str, Any], delivery: str) -> None:
        self.owner = owner
        self.channel = channel
        self.params = params
        self.delivery = delivery
        self.position = 0
        self.closed = False

    @classmethod
    def open(
        cls,
        owner: str,
        channel: str,
        params: dict[str, Any] | None = None,
        delivery: str = "websocket",
    ) -> Subscription:
        if not isinstance(channel, str) or channel not in CHANNELS:
            raise InvalidSubscription(f"unknown channel {channel!r}; expected {sorted(CHANNELS)}")
        return cls(
            owner=check_label(owner, what="owner"),
            channel=channel,
            params=dict(params or {}),
            delivery=delivery,
        )

    def advance(self, position: int) -> bool:
        """Remember that the client has everything up to ``position``; never goes back."""
        if self.closed:
            raise InvalidTransition("subscription is closed")
        if position <= self.position:
            return False
        self._advanced(position)
        return True

    @event("Advanced")
    def _advanced(self, position: int) -> None:
        self.position = position

    def close(self) -> None:
        if self.closed:
            raise InvalidTransition("subscription is already closed")
        self._closed()

    @event("Closed")
    def _closed(self) -> None:
        self.closed = True
