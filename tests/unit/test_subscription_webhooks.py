"""Webhook delivery of durable subscriptions over a real SQLite event store, the real
``WebhookNotifier`` and a real HTTP receiver on 127.0.0.1: signed batches in order, the
stored position moving only on a 2xx, nothing lost or duplicated across failures of the
receiver and a delivering loop killed mid-request and started again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import httpx
import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.webhook_notifier import WebhookGuard, WebhookNotifier, sign
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.delivery import RetryPolicy
from defi_realtime.application.durable_subscriptions import DurableSubscriptions
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.realtime.durable import SubscriptionGone
from defi_realtime.application.subscription_webhooks import SubscriptionWebhooks
from defi_realtime.domain.subscription import InvalidSubscription
from tests.property.test_ws_resume import event_store
from tests.unit.test_durable_subscriptions import T0, ingest_tvl
from tests.webhook_receiver import Received, Respond, WebhookReceiver

T = TypeVar("T")
SECRET = "s3cret"
FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02, jitter=0.0)


async def inline(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


async def inline_write(function: Callable[[], T]) -> T:
    return function()


@dataclass
class World:
    app: DefiRealtime
    event_log: EventStoreLog
    store: DurableSubscriptions
    client: httpx.AsyncClient
    ticks: int = 0

    def ingest(self, *slugs: str) -> None:
        self.ticks = ingest_tvl(self.app, self.ticks, *slugs)

    def loop(
        self, *, page: int = 2_000, batch_size: int = 100, client: httpx.AsyncClient | None = None
    ) -> SubscriptionWebhooks:
        """A delivering loop with nothing in memory (a process just started)."""
        notifier = WebhookNotifier(client or self.client, guard=WebhookGuard(allow_private=True))
        return SubscriptionWebhooks(
            self.event_log,
            notifier,
            self.store.webhook_targets,
            self.store.advance,
            state=HotState(),
            policy=FAST_RETRIES,
            interval=0.01,
            page=page,
            batch_size=batch_size,
            offload=inline,
        )

    def matching(self, after: int, slugs: set[str]) -> list[int]:
        entries = self.event_log.read(after, 100_000).entries
        return [e.position for e in entries if e.kind == "metric" and e.key in slugs]

    def stored(self, subscription_id: str, owner: str = "alice") -> int:
        return self.app.get_subscription(UUID(subscription_id), owner).position


@pytest.fixture
async def world() -> AsyncIterator[World]:
    with event_store() as app:
        guard = WebhookGuard(allow_private=False)
        store = DurableSubscriptions(app, inline_write, read=inline, webhook_targets=guard)
        async with httpx.AsyncClient() as client:
            yield World(app, EventStoreLog(app), store, client)


@pytest.fixture
def receiver_of() -> Iterator[Callable[[Respond], WebhookReceiver]]:
    receivers: list[WebhookReceiver] = []

    def make(respond: Respond) -> WebhookReceiver:
        receivers.append(WebhookReceiver(respond))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


async def create(world: World, url: str, *, position: int | None = None) -> str:
    # A store whose guard allows loopback (the fixture's refuses it: tested below).
    store = DurableSubscriptions(world.app, inline_write, read=inline)
    view = await store.create(
        "alice",
        "protocols",
        {"protocolIds": ["aave", "curve"]},
        position=position,
        webhook={"url": url, "secret": SECRET},
    )
    return view.id


def bodies(requests: list[Received]) -> list[dict[str, Any]]:
    return [json.loads(request.body) for request in requests]


def delivered_positions(receiver: WebhookReceiver) -> list[int]:
    return [u["position"] for body in bodies(receiver.successes) for u in body["updates"]]


async def until_stored(world: World, loop: SubscriptionWebhooks, sid: str, position: int) -> None:
    async with asyncio.timeout(10):
        while world.stored(sid) < position:
            await loop.tick()
            await asyncio.sleep(0.01)


async def test_batches_are_signed_ordered_and_advance_only_on_a_2xx(
    world: World, receiver_of: Callable[[Respond], WebhookReceiver]
) -> None:
    # The receiver fails its 1st and 3rd requests.
    receiver = receiver_of(lambda n: 500 if n in (1, 3) else 200)
    world.ingest("uniswap")
    sid = await create(world, receiver.url)
    start = world.stored(sid)
    world.ingest("aave", "uniswap", "curve")
    loop = world.loop(batch_size=1)

    assert await loop.tick() == 0  # refused: nothing stored
    assert world.stored(sid) == start
    assert loop.failures(sid) == (1, "HTTP 500")
    await until_stored(world, loop, sid, world.event_log.head())

    wanted = world.matching(start, {"aave", "curve"})
    assert len(wanted) == 2
    assert delivered_positions(receiver) == wanted
    sent = bodies(receiver.requests)
    # A failed batch is sent again unchanged, with the same idempotency key.
    assert sent[0] == sent[1]
    assert sent[2] == sent[3]
    keys = [request.headers["x-idempotency-key"] for request in receiver.requests]
    assert keys[0] == keys[1] == f"{sid}:{start}-{wanted[0]}"
    # Contiguous ranges: each batch starts where the previous one was stored.
    ok = bodies(receiver.successes)
    assert [b["after"] for b in ok] == [start, ok[0]["through"]]
    assert ok[0]["updates"][0] == {
        "type": "update",
        "subscriptionId": sid,
        "channel": "protocols",
        "position": wanted[0],
        "data": {
            "id": "aave",
            "metric": "tvl",
            "chain": "total",
            "value": 2.0,
            "timestamp": T0 + 2,
            "change24h": None,
            "late": None,
        },
    }
    for request in receiver.requests:
        timestamp = request.headers["x-signature-timestamp"]
        assert request.headers["x-signature"] == sign(SECRET, timestamp, request.body)


async def test_a_loop_killed_mid_request_and_started_again_loses_and_repeats_nothing(
    world: World, receiver_of: Callable[[Respond], WebhookReceiver]
) -> None:
    # The 2nd request hangs (never answered: the loop is killed while it waits), the 4th
    # fails; the rest succeed.
    receiver = receiver_of(lambda n: (200, 30.0) if n == 2 else 500 if n == 4 else 200)
    sid = await create(world, receiver.url)
    start = world.stored(sid)
    world.ingest("aave", "curve")
    first = world.loop(batch_size=1)
    task = asyncio.create_task(first.run())  # request 1: aave, stored; request 2: curve
    await asyncio.to_thread(receiver.wait_for, 2)
    task.cancel()  # killed while request 2 (curve) waits for its answer
    with pytest.raises(asyncio.CancelledError):
        await task
    stored_at_kill = world.stored(sid)
    world.ingest("uniswap", "aave", "curve", "aave")

    # Started again: nothing in memory, its own connections.
    async with httpx.AsyncClient() as client:
        second = world.loop(page=3, batch_size=2, client=client)
        await until_stored(world, second, sid, world.event_log.head())
    receiver.close()  # request 2 never gets its answer

    wanted = world.matching(start, {"aave", "curve"})
    assert len(wanted) == 5
    assert stored_at_kill == wanted[0]
    assert delivered_positions(receiver) == wanted  # each once, in order
    # The range the killed request held is sent again from the stored position.
    assert json.loads(receiver.requests[2].body)["after"] == stored_at_kill


async def test_a_range_without_a_match_is_stored_without_a_post(
    world: World, receiver_of: Callable[[Respond], WebhookReceiver]
) -> None:
    receiver = receiver_of(lambda _n: 200)
    sid = await create(world, receiver.url)
    world.ingest("uniswap", "lido")
    head = world.event_log.head()
    loop = world.loop()
    loop.idle_write = 0.0
    await loop.tick()
    assert world.stored(sid) == head
    assert receiver.requests == []


async def test_a_webhook_subscription_is_checked_refused_to_sockets_and_deleted(
    world: World, receiver_of: Callable[[Respond], WebhookReceiver]
) -> None:
    receiver = receiver_of(lambda _n: 200)
    # The node's guard refuses a loopback target when it is created.
    with pytest.raises(InvalidSubscription) as refused:
        await world.store.create("alice", "protocols", webhook={"url": receiver.url})
    assert refused.value.field == "webhook.url"
    with pytest.raises(InvalidSubscription) as malformed:
        await world.store.create("alice", "protocols", webhook={"url": "ftp://example.com/x"})
    assert malformed.value.field == "webhook.url"

    sid = await create(world, receiver.url)
    view = await world.store.get("alice", sid)
    assert view.delivery == "webhook"
    assert view.webhook is not None
    assert (view.webhook.url, view.webhook.secret_set) == (receiver.url, True)
    # Its position is its webhook's: no client attaches to it.
    with pytest.raises(SubscriptionGone):
        await world.store.attach("alice", sid)
    assert [t.id for t in await world.store.webhook_targets()] == [sid]

    await world.store.close("alice", sid)
    assert await world.store.webhook_targets() == ()
    world.ingest("aave")
    assert await world.loop().tick() == 0
    assert receiver.requests == []
