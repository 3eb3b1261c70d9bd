"""``defi_realtime.client`` against the real server: REST helpers, the stream's snapshot then
live updates, and a stream that resumes by itself across a server restart."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from defi_realtime.client import (
    Alert,
    ApiError,
    DefiRealtimeClient,
    Filters,
    LiveStream,
    MetricData,
    Observation,
    Price,
    PriceData,
    ReconnectPolicy,
    ResumeGapError,
    StreamError,
    Update,
)
from defi_realtime.domain.alert_values import (
    ProtocolTarget,
    ThresholdCondition,
    WebhookChannel,
    WebsocketChannel,
)

from .conftest import LiveServer, settle, start_server

NOW = time.time() - 60
QUICK = ReconnectPolicy(initial_delay=0.05, max_delay=0.5, give_up_after=30.0)
WAIT = 20.0


@pytest.fixture
async def client(server: LiveServer) -> AsyncIterator[DefiRealtimeClient]:
    async with DefiRealtimeClient(server.base_url, server.api_key) as client:
        yield client


def aave(value: float, at: float, **listing: Any) -> Observation:
    return Observation(protocol="aave-v3", value=value, observed_at=at, **listing)


LISTING = {"name": "Aave V3", "category": "Lending", "chains": ["Ethereum", "Arbitrum"]}


async def test_rest_helpers_return_typed_values(
    client: DefiRealtimeClient, http: httpx.Client
) -> None:
    result = await client.ingest(
        [
            aave(100.0, NOW - 3600, **LISTING),
            aave(110.0, NOW),
            aave(70.0, NOW, chain="Ethereum"),
            Observation(protocol="lido", value=50.0, observed_at=NOW, name="Lido"),
            Observation(protocol="lido", value=7.0, observed_at=NOW, metric="volume_24h"),
        ],
        [Price(token="coingecko:ethereum", price=3100.5, observed_at=NOW, confidence=0.99)],
    )
    assert (result.accepted, result.rejected, result.committed) == (6, 0, True)
    assert result.position >= 5
    await asyncio.to_thread(settle, http)  # the read models are asynchronous

    page = await client.protocols(limit=1)
    assert page.total == 2
    assert [p.slug for p in page.protocols] == ["aave-v3"]
    assert [p.slug async for p in client.all_protocols(page_size=1)] == ["aave-v3", "lido"]

    protocol = await client.protocol("aave-v3")
    assert (protocol.name, protocol.category, protocol.tvl) == ("Aave V3", "Lending", 110.0)
    assert protocol.chainTvls == {"Ethereum": 70.0}
    assert protocol.change_1h == pytest.approx(10.0)

    series = await client.metrics("aave-v3")
    assert [(p.timestamp, p.value) for p in series.points] == [
        (pytest.approx(NOW - 3600), 100.0),
        (pytest.approx(NOW), 110.0),
    ]
    on_chain = await client.metrics("aave-v3", chain="ethereum")
    assert [p.value for p in on_chain.points] == [70.0]

    tvl = await client.realtime_tvl(["lido", "aave-v3"])
    assert [(e.id, e.value) for e in tvl] == [("lido", 50.0), ("aave-v3", 110.0)]
    assert all(0 < e.position <= result.position for e in tvl)
    volumes = await client.realtime_volumes(["lido"])
    assert [(v.id, v.volume_24h, v.fees_24h) for v in volumes] == [("lido", 7.0, None)]
    bucketed = await client.metrics("aave-v3", bucket="1d", start=NOW - 7200)
    assert bucketed.bucket == 86_400
    assert bucketed.points[-1].value == 110.0
    prices = await client.realtime_prices(["coingecko:ethereum"])
    assert [(p.token, p.price, p.confidence) for p in prices] == [
        ("coingecko:ethereum", 3100.5, 0.99)
    ]

    with pytest.raises(ApiError) as missing:
        await client.protocol("no-such-protocol")
    assert (missing.value.status, missing.value.code) == (404, "protocol_not_found")


async def test_ingest_without_a_key_is_an_api_error(server: LiveServer) -> None:
    async with DefiRealtimeClient(server.base_url) as anonymous:
        with pytest.raises(ApiError) as refused:
            await anonymous.ingest([aave(1.0, NOW, **LISTING)])
    assert refused.value.status == 401


async def test_alert_helpers(client: DefiRealtimeClient, http: httpx.Client) -> None:
    await client.ingest([aave(100.0, NOW, **LISTING)])
    await asyncio.to_thread(settle, http)
    rule = await client.create_alert(
        ProtocolTarget(protocol="aave-v3"),
        ThresholdCondition(kind="threshold", direction="below", value=50.0),
        # A public name: a private address is refused when the rule is created (ADR 0037).
        [WebhookChannel(kind="webhook", url="https://hooks.example.com/hook", secret="s3cret")],
        name="aave drains",
        cooldown=60,
    )
    assert rule.name == "aave drains"
    assert rule.target == ProtocolTarget(protocol="aave-v3")
    assert rule.channels[0].kind == "webhook"
    assert rule.channels[0].secret_set is True  # type: ignore[union-attr]
    assert (rule.state, rule.firing, rule.cooldown) == ("active", "resolved", 60)

    listed = await client.alerts()
    assert [r.id for r in listed.alerts] == [rule.id]
    assert (await client.pause_alert(rule.id)).state == "paused"
    assert (await client.resume_alert(rule.id)).state == "active"
    assert (await client.alert(rule.id)).id == rule.id
    await client.delete_alert(rule.id)
    with pytest.raises(ApiError) as gone:
        await client.alert(rule.id)
    assert gone.value.status == 404


async def collect(stream: LiveStream, into: list[Update], until: int) -> None:
    async for frame in stream:
        assert isinstance(frame, Update)
        into.append(frame)
        if len(into) >= until:
            return


async def until(done: Any, task: asyncio.Task[None]) -> None:
    """Wait (inside the caller's timeout) for ``done()``; a failed collector fails now."""
    while not done():
        if task.done():
            await task
            raise AssertionError("the stream ended early")
        await asyncio.sleep(0.01)


def values(frames: list[Update]) -> list[tuple[str, str, float, bool]]:
    out = []
    for frame in frames:
        assert isinstance(frame.data, MetricData)
        out.append((frame.data.id, frame.data.chain, frame.data.value, frame.snapshot))
    return out


async def test_stream_yields_the_snapshot_then_live_updates(
    server: LiveServer, client: DefiRealtimeClient, http: httpx.Client
) -> None:
    first = await client.ingest(
        [aave(100.0, NOW - 10, **LISTING), aave(60.0, NOW - 10, chain="Ethereum")]
    )
    await client.ingest([Observation(protocol="lido", value=5.0, observed_at=NOW, name="Lido")])
    await asyncio.to_thread(settle, http)
    frames: list[Update] = []
    stream = client.stream("protocols", Filters(protocol_ids=["aave-v3"]), reconnect=QUICK)
    async with stream, asyncio.timeout(WAIT):
        task = asyncio.create_task(collect(stream, frames, until=4))
        await until(lambda: len(frames) >= 2, task)
        live = await client.ingest([aave(120.0, NOW), aave(80.0, NOW, chain="Ethereum")])
        await task
    assert sorted(values(frames[:2])) == [
        ("aave-v3", "Ethereum", 60.0, True),
        ("aave-v3", "total", 100.0, True),
    ]
    assert values(frames[2:]) == [
        ("aave-v3", "total", 120.0, False),
        ("aave-v3", "Ethereum", 80.0, False),
    ]
    snapshot_position = frames[0].position
    assert frames[1].position == snapshot_position >= first.position
    assert [f.position for f in frames[2:]] == [live.position - 1, live.position]
    assert stream.position == live.position
    assert stream.reconnects == 0


async def test_prices_stream(
    server: LiveServer, client: DefiRealtimeClient, http: httpx.Client
) -> None:
    eth = "coingecko:ethereum"
    await client.ingest(prices=[Price(token=eth, price=3000.0, observed_at=NOW - 5)])
    await asyncio.to_thread(settle, http)
    frames = []
    stream = client.stream("prices", Filters(token_ids=[eth]), reconnect=QUICK)
    async with stream, asyncio.timeout(WAIT):
        async for frame in stream:
            frames.append(frame)
            if len(frames) == 1:
                await client.ingest(prices=[Price(token=eth, price=3100.0, observed_at=NOW)])
            else:
                break
    data = [frame.data for frame in frames]
    assert all(isinstance(d, PriceData) for d in data)
    assert [(d.id, d.value) for d in data] == [(eth, 3000.0), (eth, 3100.0)]


def settle_at(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        settle(http)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_stream_resumes_across_a_server_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    if port := free_port():
        first_server = start_server(data_dir, port=port)
        live = await asyncio.to_thread(first_server.__enter__)
        key = live.api_key
        written: list[tuple[int, float]] = []  # (position, value) of each live update
        frames: list[Update] = []
        async with DefiRealtimeClient(live.base_url, key) as client:
            await client.ingest([aave(100.0, NOW - 100, **LISTING)])
            await asyncio.to_thread(settle_at, live.base_url)  # so the snapshot holds it
            stream = client.stream("protocols", Filters(protocol_ids=["aave-v3"]), reconnect=QUICK)
            async with stream, asyncio.timeout(60):
                task = asyncio.create_task(collect(stream, frames, until=1 + 2 + 3))
                await until(lambda: frames, task)
                for step, value in enumerate((101.0, 102.0)):
                    answer = await client.ingest([aave(value, NOW - 50 + step)])
                    written.append((answer.position, value))
                await until(lambda: len(frames) >= 3, task)

                # The server goes away with the client connected, then comes back on the
                # same store and port; the updates written after it restarts must arrive.
                await asyncio.to_thread(first_server.__exit__, None, None, None)
                await asyncio.sleep(0.3)  # a few failed reconnection attempts
                assert not task.done()
                second_server = start_server(data_dir, api_key=key, port=port)
                await asyncio.to_thread(second_server.__enter__)
                try:
                    for step, value in enumerate((90.0, 91.0, 92.0)):
                        answer = await client.ingest([aave(value, NOW + step)])
                        written.append((answer.position, value))
                    await task
                finally:
                    await stream.aclose()
                    await asyncio.to_thread(second_server.__exit__, None, None, None)

    assert values(frames[:1]) == [("aave-v3", "total", 100.0, True)]
    # Every live update exactly once, in log order.
    assert [(f.position, f.data.value) for f in frames[1:]] == written
    assert stream.reconnects >= 1
    assert stream.position == written[-1][0]


async def test_since_beyond_the_log_is_a_resume_gap(server: LiveServer) -> None:
    async with DefiRealtimeClient(server.base_url, server.api_key) as client:
        stream = client.stream("protocols", since=10_000, reconnect=QUICK)
        with pytest.raises(ResumeGapError):
            async with stream, asyncio.timeout(WAIT):
                await anext(stream)


async def test_a_bad_key_is_not_retried(server: LiveServer) -> None:
    async with DefiRealtimeClient(server.base_url, "not-a-key") as client:
        stream = client.stream("protocols", reconnect=QUICK)
        with pytest.raises(StreamError) as refused:
            async with stream, asyncio.timeout(WAIT):
                await anext(stream)
    assert refused.value.code in (4001, 401, 403)


async def test_an_unreachable_server_gives_up_within_the_policy(tmp_path: Path) -> None:
    if port := free_port():
        policy = ReconnectPolicy(initial_delay=0.05, max_delay=0.2, give_up_after=1.0)
        stream = LiveStream(f"ws://127.0.0.1:{port}/v2/realtime", "protocols", reconnect=policy)
        started = time.monotonic()
        with pytest.raises(StreamError, match="unreachable"):
            async with stream, asyncio.timeout(WAIT):
                await anext(stream)
    assert 0.9 < time.monotonic() - started < 5


async def test_a_drop_right_after_the_snapshot_repeats_no_value(tmp_path: Path) -> None:
    """No update after the snapshot yet: the client cannot know the snapshot was whole, asks
    for a new one, and hands out only what changed."""
    port = free_port()
    first_server = start_server(tmp_path / "data", port=port)
    live = await asyncio.to_thread(first_server.__enter__)
    frames: list[Update] = []
    async with DefiRealtimeClient(live.base_url, live.api_key) as client:
        await client.ingest(
            [aave(100.0, NOW - 100, **LISTING), aave(60.0, NOW - 100, chain="Ethereum")]
        )
        await asyncio.to_thread(settle_at, live.base_url)
        stream = client.stream("protocols", Filters(protocol_ids=["aave-v3"]), reconnect=QUICK)
        async with stream, asyncio.timeout(60):
            task = asyncio.create_task(collect(stream, frames, until=4))
            await until(lambda: len(frames) >= 2, task)
            await asyncio.to_thread(first_server.__exit__, None, None, None)
            second_server = start_server(tmp_path / "data", api_key=live.api_key, port=port)
            await asyncio.to_thread(second_server.__enter__)
            try:
                changed = await client.ingest([aave(130.0, NOW - 50)])
                await until(lambda: len(frames) >= 3, task)
                last = await client.ingest([aave(140.0, NOW)])
                await task
            finally:
                await stream.aclose()
                await asyncio.to_thread(second_server.__exit__, None, None, None)
    assert sorted(values(frames[:2])) == [
        ("aave-v3", "Ethereum", 60.0, True),
        ("aave-v3", "total", 100.0, True),
    ]
    # The change made while the client was away: once, from the new snapshot or live.
    assert [(f.data.id, f.data.value) for f in frames[2:3]] == [("aave-v3", 130.0)]
    if frames[2].snapshot:  # the client came back after the change: a new snapshot
        assert frames[2].position >= changed.position
    else:  # before it: an empty new snapshot, then the change live
        assert frames[2].position == changed.position
    assert values(frames[3:]) == [("aave-v3", "total", 140.0, False)]
    assert frames[3].position == last.position == stream.position


async def test_the_alerts_channel_yields_typed_alerts(
    client: DefiRealtimeClient, http: httpx.Client
) -> None:
    await client.ingest([aave(100.0, NOW - 30, **LISTING)])
    await asyncio.to_thread(settle, http)
    rule = await client.create_alert(
        ProtocolTarget(protocol="aave-v3"),
        ThresholdCondition(kind="threshold", direction="below", value=50.0),
        [WebsocketChannel(kind="websocket")],
        cooldown=0,
    )
    alerts: list[Alert] = []
    stream = client.stream("alerts", reconnect=QUICK)

    async def collect_alerts() -> None:
        async for frame in stream:
            assert isinstance(frame, Alert)
            alerts.append(frame)
            if len(alerts) == 2:
                return

    async with stream, asyncio.timeout(WAIT):
        task = asyncio.create_task(collect_alerts())
        # Live only (no snapshot on alerts): the position is known once subscribed.
        await until(lambda: stream.position is not None, task)
        await client.ingest([aave(40.0, NOW - 20)])  # fires
        await until(lambda: alerts, task)
        await client.ingest([aave(100.0, NOW - 10)])  # resolves
        await task

    assert [(a.alert_id, a.condition) for a in alerts] == [
        (str(rule.id), "firing"),
        (str(rule.id), "resolved"),
    ]
    assert alerts[0].position < alerts[1].position == stream.position
