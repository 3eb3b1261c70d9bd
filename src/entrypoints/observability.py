"""What a running node reports to Prometheus beyond the counters the code increments.

Gauges (connections, follower positions and lag) and the tallies kept on hot paths (socket
frames and bytes, garbage-collector pauses) are written by ``sample``: on every scrape by the
worker that answers, and every ``METRICS_INTERVAL`` seconds by every process, so that with
several workers the files of the workers that did not answer are fresh too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Final

from prometheus_client import start_http_server

from ..adapters.prometheus_metrics import PrometheusMetrics
from .node import Node
from .ws_server import SocketGateway

__all__ = ["run_sampler", "sample", "worker_metrics"]

log = logging.getLogger(__name__)

# How long a sample waits for the event store's head position.
HEAD_TIMEOUT: Final = 1.0


async def sample(metrics: PrometheusMetrics, node: Node, gateway: SocketGateway | None) -> None:
    """Write this process's current values into ``metrics``."""
    hub = node.hub
    metrics.ws_connections.set(len(hub.connections))
    metrics.ws_replays.set(hub.replays.under_way())
    metrics.ws_fell_behind.set(hub.fell_behind)
    if gateway is not None:
        tally = gateway.tally.take()
        metrics.sockets_sent(
            tally.frames, tally.size, tally.closes.items(), tally.handshakes.items()
        )
    metrics.sample_process()
    if node.follower is not None:
        metrics.log_head.set(node.follower.position)
    for name, runner in node.runners.items():
        metrics.projection_position.labels(name).set(runner.position)
        metrics.projection_stalled.labels(name).set(runner.stall is not None)
        metrics.projection_failures.labels(name).set(runner.failures)
    try:
        # Bounded: a scrape must answer while the event store is slow (lag then stays at
        # its last value; the other metrics are fresh).
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await asyncio.to_thread(node.event_log.head)
    except TimeoutError:
        log.warning("metrics: no log head within %.1fs; lag not updated", HEAD_TIMEOUT)
        return
    metrics.log_head_position.set(head)
    for name, runner in node.runners.items():
        metrics.projection_lag.labels(name).set(max(head - runner.position, 0))
    # Followers waiting for their election follow nothing: reported only while they run,
    # or a standby would show the whole log as lag.
    positions = {
        runner.name: runner.position
        for follower in node.followers
        if follower.running
        for runner in [*follower.runners, *follower.late_runners]
    }
    if node.relay is not None and node.relay.running:
        positions[node.relay.name] = node.relay.position
    for name, position in positions.items():
        metrics.follower_position.labels(name).set(position)
        metrics.follower_lag.labels(name).set(max(head - position, 0))


async def run_sampler(
    metrics: PrometheusMetrics,
    node: Node,
    gateway: SocketGateway | None,
    interval: float,
) -> None:
    """``sample`` every ``interval`` seconds until cancelled (a failed sample is logged and
    the next one tried: metrics must not take the node down)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await sample(metrics, node, gateway)
        except Exception:
            log.warning("metrics sample failed", exc_info=True)


@contextlib.asynccontextmanager
async def worker_metrics(node: Node, host: str, port: int, interval: float) -> AsyncIterator[None]:
    """``/metrics`` of a ``worker`` process (it serves no API) on ``host:port``, sampled
    every ``interval`` seconds, for as long as the context lasts."""
    metrics: PrometheusMetrics = node.container.metrics()
    metrics.start()
    await sample(metrics, node, None)
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    sampler = asyncio.create_task(run_sampler(metrics, node, None, interval), name="sampler")
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        metrics.stop()
