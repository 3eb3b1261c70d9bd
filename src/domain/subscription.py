"""The Subscription aggregate: a durable, owned stream subscription a client can resume,
and the owner's ``SubscriptionBook`` (names unique per owner, a bounded number per owner)."""

from __future__ import annotations

from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import DomainError, InvalidTransition
from .observations import check_label

CHANNELS: Final[frozenset[str]] = frozenset(
    {"protocols", "prices", "volumes", "alerts", "anomalies"}
)
SUBSCRIPTION_BOOK_NAMESPACE: Final = uuid5(NAMESPACE_URL, "https://defi-realtime/subscriptions/")
DELIVERIES: Final[frozenset[str]] = frozenset({"websocket", "webhook"})
"""How a subscription reaches its owner: a client attaches to it (``websocket``), or the
server POSTs what matches to the subscription's URL (``webhook``)."""
MAX_WEBHOOK_URL_LENGTH: Final = 2_048
MAX_WEBHOOK_SECRET_LENGTH: Final = 256


class InvalidSubscription(InvalidTransition):
    """The subscription's channel or filter is not acceptable."""


class SubscriptionNameTaken(DomainError):
    """The owner already has a live subscription of that name."""

    def __init__(self, name: str, existing: str) -> None:
        super().__init__(f"a subscription named {name!r} exists already", field="name")
        self.name = name
        self.existing = existing


class SubscriptionQuotaExceeded(DomainError):
    """The owner already has as many live subscriptions as allowed."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} subscriptions")
        self.limit = limit


class Subscription(Aggregate):
    """A client's subscription: channel + filter + delivery, with a resume position.

    ``position`` is the last log position the client acknowledged (``websocket``), or the
    last one its webhook answered with a 2xx (``webhook``): what comes next is every
    matching update after it.
    """

    @event("Opened")
    def __init__(
        self,
        owner: str,
        channel: str,
        params: dict[str, Any],
        delivery: str,
        name: str = "",
        position: int = 0,
        webhook: dict[str, str] | None = None,
    ) -> None:
        self.owner = owner
        self.channel = channel
        self.params = params
        self.delivery = delivery
        self.name = name
        # ``{"url", "secret"?}`` of a ``webhook`` subscription (None: attached over the
        # WebSocket). Subscriptions opened before webhooks existed replay with None.
        self.webhook = webhook
        # Where it starts: the log's head when it was opened (nothing older is news).
        self.position = position
        self.closed = False

    @classmethod
    def open(
        cls,
        owner: str,
        channel: str,
        params: dict[str, Any] | None = None,
        delivery: str = "websocket",
        *,
        name: str = "",
        position: int = 0,
        webhook: dict[str, str] | None = None,
    ) -> Subscription:
        if not isinstance(channel, str) or channel not in CHANNELS:
            raise InvalidSubscription(f"unknown channel {channel!r}; expected {sorted(CHANNELS)}")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise InvalidSubscription("position must be a non-negative integer")
        if delivery not in DELIVERIES:
            raise InvalidSubscription(
                f"unknown delivery {delivery!r}; expected {sorted(DELIVERIES)}", field="delivery"
            )
        if (delivery == "webhook") != (webhook is not None):
            raise InvalidSubscription(
                "a webhook is given with delivery 'webhook', and only then", field="webhook"
            )
        return cls(
            owner=check_label(owner, what="owner"),
            channel=channel,
            params=dict(params or {}),
            delivery=delivery,
            name=check_label(name, what="name") if name else "",
            position=position,
            webhook=None if webhook is None else _webhook(webhook),
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


def _webhook(webhook: dict[str, str]) -> dict[str, str]:
    url, secret = webhook.get("url"), webhook.get("secret")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidSubscription("webhook.url must be an http(s) URL", field="webhook.url")
    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise InvalidSubscription(
            f"webhook.url holds at most {MAX_WEBHOOK_URL_LENGTH} characters", field="webhook.url"
        )
    checked = {"url": url}
    if secret is not None:
        if not isinstance(secret, str) or not 0 < len(secret) <= MAX_WEBHOOK_SECRET_LENGTH:
            raise InvalidSubscription(
                f"webhook.secret is a string of 1 to {MAX_WEBHOOK_SECRET_LENGTH} characters",
                field="webhook.secret",
            )
        checked["secret"] = secret
    return checked


class SubscriptionBook(Aggregate):
    """An owner's live subscriptions by name.

    Saved in the same transaction as the subscription it admits, so two concurrent
    creations cannot both take one name, or the last place (the second save conflicts on
    the book's version and is retried). Its id is derived from the owner, so a listing is
    one lookup.
    """

    @staticmethod
    def create_id(owner: str, *_: Any, **__: Any) -> UUID:
        return uuid5(SUBSCRIPTION_BOOK_NAMESPACE, owner)

    @staticmethod
    def id_for(owner: str) -> UUID:
        return uuid5(SUBSCRIPTION_BOOK_NAMESPACE, owner)

    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        # Subscription id -> name ("" for an unnamed one), in the order admitted.
        self.subscriptions: dict[str, str] = {}

    @classmethod
    def open(cls, owner: str) -> SubscriptionBook:
        return cls(owner=check_label(owner, what="owner"))

    def admit(self, subscription_id: UUID | str, name: str, limit: int) -> None:
        """Take ``subscription_id`` in; ``name`` must be free among the live ones."""
        if name:
            for existing, taken in self.subscriptions.items():
                if taken == name:
                    raise SubscriptionNameTaken(name, existing)
        if len(self.subscriptions) >= limit:
            raise SubscriptionQuotaExceeded(limit)
        self._admitted(str(subscription_id), name, self.owner)

    # ``owner``: whose the name is (sealed with the owner's key, docs/adr/0042); older
    # ``Admitted`` events have none.
    @event("Admitted")
    def _admitted(self, subscription_id: str, name: str, owner: str = "") -> None:
        self.subscriptions[subscription_id] = name

    def release(self, subscription_id: UUID | str) -> bool:
        if str(subscription_id) not in self.subscriptions:
            return False
        self._released(str(subscription_id))
        return True

    @event("Released")
    def _released(self, subscription_id: str) -> None:
        self.subscriptions.pop(subscription_id, None)


WEBHOOK_DIRECTORY_ID: Final = uuid5(SUBSCRIPTION_BOOK_NAMESPACE, "webhook-delivered")


class WebhookDirectory(Aggregate):
    """Every live webhook-delivered subscription of the deployment, whoever owns it: what
    the delivering loop walks. Saved in the same transaction as the subscription it admits
    or releases (one aggregate of a fixed id: no read model to lag behind)."""

    @staticmethod
    def create_id(*_: Any, **__: Any) -> UUID:
        return WEBHOOK_DIRECTORY_ID

    @event("Opened")
    def __init__(self) -> None:
        # Subscription id -> owner, in the order admitted.
        self.subscriptions: dict[str, str] = {}

    def admit(self, subscription_id: UUID | str, owner: str) -> None:
        self._admitted(str(subscription_id), owner)

    @event("Admitted")
    def _admitted(self, subscription_id: str, owner: str) -> None:
        self.subscriptions[subscription_id] = owner

    def release(self, subscription_id: UUID | str) -> bool:
        if str(subscription_id) not in self.subscriptions:
            return False
        self._released(str(subscription_id))
        return True

    @event("Released")
    def _released(self, subscription_id: str) -> None:
        self.subscriptions.pop(subscription_id, None)
