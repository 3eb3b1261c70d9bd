"""Durable subscriptions: named, owned subscriptions a client re-attaches to and resumes.

The use cases of the REST API (create, list, get, delete) and of the realtime hub (attach:
look one up for its owner; advance: store acknowledged positions). A subscription's channel
and filter are checked exactly as a WebSocket ``subscribe`` frame's are (the same parser),
so what is stored always attaches. Writes run on the writer thread (docs/adr/0003), reads
off the event loop; ``owner`` is an opaque string (today an API key's owner). Another
owner's subscription, a closed one and a malformed id are all "not found" (docs/adr/0038).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from uuid import UUID

from ..domain.subscription import InvalidSubscription, Subscription
from .app import DefiRealtime, SubscriptionNotFound
from .delivery import WebhookTargetRefused
from .ports import WebhookTargets
from .realtime.durable import Attachment, SubscriptionGone
from .realtime.protocol import CHANNELS, Filter, FrameError
from .subscription_webhooks import WebhookTarget

T = TypeVar("T")
Write = Callable[[Callable[[], T]], Awaitable[T]]
Read = Callable[..., Awaitable[Any]]

# Live subscriptions per owner: each is kept, listed and possibly attached; a bound keeps a
# runaway script from filling the store.
MAX_SUBSCRIPTIONS_PER_OWNER: Final = 100


@dataclass(frozen=True, slots=True)
class WebhookView:
    """A subscription's webhook as its owner sees it: never the secret."""

    url: str
    secret_set: bool

    @classmethod
    def of(cls, webhook: Mapping[str, str]) -> WebhookView:
        return cls(url=webhook["url"], secret_set=bool(webhook.get("secret")))


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """A durable subscription as its owner sees it."""

    id: str
    name: str
    channel: str
    params: dict[str, Any]
    delivery: str
    # The last acknowledged log position (at creation: where it starts).
    position: int
    created_at: float
    updated_at: float
    # Where a ``webhook`` subscription is POSTed (its secret is never shown back).
    webhook: WebhookView | None = None

    @classmethod
    def of(cls, subscription: Subscription) -> SubscriptionView:
        return cls(
            id=str(subscription.id),
            name=subscription.name,
            channel=subscription.channel,
            params=dict(subscription.params),
            delivery=subscription.delivery,
            position=subscription.position,
            created_at=subscription.created_on.timestamp(),
            updated_at=subscription.modified_on.timestamp(),
            webhook=None if subscription.webhook is None else WebhookView.of(subscription.webhook),
        )


def check_stream(channel: Any, params: Any) -> Filter:
    """The filter of a channel + params, refused as a WebSocket ``subscribe`` would be
    (``InvalidSubscription`` naming the field)."""
    if channel not in CHANNELS:
        raise InvalidSubscription(f"channel must be one of {list(CHANNELS)}", field="channel")
    try:
        return Filter.parse(params)
    except FrameError as error:
        raise InvalidSubscription(str(error), field="params") from None


def subscription_id(raw: str) -> UUID:
    """A subscription id from a path or a frame (``SubscriptionNotFound`` if malformed)."""
    try:
        return UUID(raw)
    except (ValueError, TypeError, AttributeError):
        raise SubscriptionNotFound(str(raw)[:64]) from None


class DurableSubscriptions:
    """Durable subscriptions over the application (``write``: on the writer thread)."""

    def __init__(
        self,
        app: DefiRealtime,
        write: Write[Any],
        *,
        read: Read = asyncio.to_thread,
        limit: int = MAX_SUBSCRIPTIONS_PER_OWNER,
        webhook_targets: WebhookTargets | None = None,
    ) -> None:
        self.app = app
        self._write = write
        self._read = read
        self.limit = limit
        # The SSRF guard asked when a webhook subscription is created (None: no check).
        self._webhook_targets = webhook_targets

    async def create(
        self,
        owner: str,
        channel: str,
        params: Mapping[str, Any] | None = None,
        *,
        name: str = "",
        position: int | None = None,
        webhook: Mapping[str, str] | None = None,
    ) -> SubscriptionView:
        """Open one; ``position``: resume after it (default: the log's head now);
        ``webhook`` (``{"url", "secret"?}``): POSTed to instead of attached. Raises
        ``InvalidSubscription``, ``SubscriptionNameTaken``, ``SubscriptionQuotaExceeded``."""
        check_stream(channel, params)
        if webhook is not None and self._webhook_targets is not None:
            try:
                await self._webhook_targets.check_new(str(webhook.get("url", "")))
            except WebhookTargetRefused as refused:
                raise InvalidSubscription(
                    f"webhook.url is refused: {refused} (webhooks may only call public "
                    "addresses unless ALLOW_PRIVATE_WEBHOOKS is set)",
                    field="webhook.url",
                ) from None
        stored = {key: value for key, value in (params or {}).items() if value is not None}
        app, limit = self.app, self.limit
        hook = None if webhook is None else dict(webhook)
        created = await self._write(
            lambda: app.open_subscription(
                owner, channel, stored, name=name, position=position, limit=limit, webhook=hook
            )
        )
        return await self.get(owner, str(created))

    async def list(self, owner: str) -> list[SubscriptionView]:
        found = await self._read(self.app.list_subscriptions, owner)
        return [SubscriptionView.of(subscription) for subscription in found]

    async def get(self, owner: str, raw_id: str) -> SubscriptionView:
        """``SubscriptionNotFound`` for another owner's, a closed or an unknown one."""
        found = await self._read(self.app.get_subscription, subscription_id(raw_id), owner)
        return SubscriptionView.of(found)

    async def close(self, owner: str, raw_id: str) -> None:
        """Delete (close) one; ``SubscriptionNotFound`` as ``get``."""
        key, app = subscription_id(raw_id), self.app
        await self._write(lambda: app.close_subscription(key, owner))

    # -- the hub's side (``DurableSubscriptionStore``) -------------------------------------

    async def attach(self, owner: str, subscription_id_: str) -> Attachment:
        try:
            view = await self.get(owner, subscription_id_)
        except SubscriptionNotFound:
            raise SubscriptionGone(subscription_id_) from None
        if view.delivery != "websocket":
            # Its position is its webhook's: an attached client's acks would skip updates
            # the webhook has not had.
            raise SubscriptionGone(subscription_id_)
        return Attachment(
            id=view.id,
            channel=view.channel,
            filter=Filter.parse(view.params),
            position=view.position,
        )

    async def advance(self, acknowledged: Mapping[str, tuple[str, int]]) -> set[str]:
        keys = {UUID(key): value for key, value in acknowledged.items()}
        app = self.app
        gone = await self._write(lambda: app.advance_subscriptions(keys))
        return {str(key) for key in gone}

    # -- the webhook delivery's side -------------------------------------------------------

    async def webhook_targets(
        self, known: Mapping[str, WebhookTarget] | None = None
    ) -> tuple[WebhookTarget, ...]:
        """Every live webhook subscription (``SubscriptionWebhooks``), oldest first: those
        in ``known`` as they are there, the others loaded with their stored position."""
        known = known or {}
        ids, loaded = await self._read(self.app.webhook_subscriptions, set(known))
        found = dict(known)
        for subscription in loaded:
            if subscription.webhook is not None:
                found[str(subscription.id)] = WebhookTarget(
                    id=str(subscription.id),
                    owner=subscription.owner,
                    channel=subscription.channel,
                    filter=Filter.parse(subscription.params),
                    url=subscription.webhook["url"],
                    secret=subscription.webhook.get("secret"),
                    position=subscription.position,
                )
        return tuple(found[key] for key in ids if key in found)
