"""Prometheus metrics of one process (``prometheus_client``): the ``Telemetry`` adapter.

One ``PrometheusMetrics`` per app, with its own registry (several apps per process in tests
must not collide). Under ``defi-realtime serve --workers N`` every worker process writes its
samples to the shared ``PROMETHEUS_MULTIPROC_DIR`` (``prometheus_client``'s multiprocess
mode, chosen by that variable when ``prometheus_client`` is first imported) and ``scrape``
merges the files of all workers, whichever worker answers ``/metrics``. Each gauge says how
workers combine (``multiprocess_mode``); see docs/adr/0025-metrics-across-worker-processes.md.

Metric names follow Prometheus' conventions: a ``dr_`` prefix, base units in the name
(``_seconds``, ``_bytes``), ``_total`` on counters (added by the library).
"""

from __future__ import annotations

import gc
import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

__all__ = [
    "CONTENT_TYPE_LATEST",
    "GarbageCollectorPauses",
    "PrometheusMetrics",
    "multiprocess_dir",
]

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

HTTP_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COMMIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS: Final = (1, 10, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000)
DELIVERY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
GC_BUCKETS: Final = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Pauses the collector callback keeps until the next sample drains them (a bound, not a
# target: the sampler drains every few seconds).
GC_PAUSES_KEPT: Final = 10_000


def multiprocess_dir() -> str | None:
    """The directory the workers of this node share, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


class GarbageCollectorPauses:
    """Times every cyclic collection (``gc.callbacks``).

    The callback runs wherever a collection happens, possibly while this thread holds a
    metric's lock (``prometheus_client`` locks are not re-entrant): it only appends to a
    deque, and ``drain`` moves the pauses into the histogram from the sampler.
    """

    def __init__(self) -> None:
        self._started = 0.0
        self.pauses: deque[tuple[int, float]] = deque(maxlen=GC_PAUSES_KEPT)

    def __call__(self, phase: str, info: Mapping[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif phase == "stop" and self._started:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._started))
            self._started = 0.0

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def drain(self) -> list[tuple[int, float]]:
        drained: list[tuple[int, float]] = []
        while self.pauses:
            drained.append(self.pauses.popleft())
        return drained


class _ProcessSamples:
    """The standard ``process_*`` metrics where the library's collector cannot serve them:
    in multiprocess mode a custom collector would only ever report the worker that answers
    the scrape, so each worker writes its own values (``pid`` label) on every sample."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._source = ProcessCollector(registry=None)
        self._cpu_seen = 0.0
        self.cpu = Counter(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds (all workers).",
            registry=registry,
        )
        self.gauges = {
            name: Gauge(name, help, registry=registry, multiprocess_mode="liveall")
            for name, help in (
                ("process_resident_memory_bytes", "Resident memory size in bytes."),
                ("process_virtual_memory_bytes", "Virtual memory size in bytes."),
                ("process_open_fds", "Number of open file descriptors."),
                ("process_max_fds", "Maximum number of open file descriptors."),
                ("process_start_time_seconds", "Start time of the process since unix epoch."),
            )
        }

    def sample(self) -> None:
        for family in self._source.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    # A counter cannot be set: add what was spent since the last sample.
                    if sample.value > self._cpu_seen:
                        self.cpu.inc(sample.value - self._cpu_seen)
                        self._cpu_seen = sample.value
                elif sample.name in self.gauges:
                    self.gauges[sample.name].set(sample.value)


class PrometheusMetrics:
    """Every metric of one app instance; implements the application's ``Telemetry``."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        registry = self.registry = CollectorRegistry()
        # -- HTTP
        self.requests = Counter(
            "dr_http_requests", "HTTP requests", ["route", "status"], registry=registry
        )
        self.request_duration = Histogram(
            "dr_http_request_duration_seconds",
            "HTTP request latency (to the end of the response) by route template, method "
            "and status class",
            ["route", "method", "status_class"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        # -- ingest
        self.ingested = Counter(
            "dr_ingest_items", "Ingest items by outcome", ["outcome"], registry=registry
        )
        self.commit_duration = Histogram(
            "dr_ingest_commit_duration_seconds",
            "Time to commit one group of ingest batches to the event store",
            buckets=COMMIT_BUCKETS,
            registry=registry,
        )
        self.commit_items = Histogram(
            "dr_ingest_commit_items",
            "Items (observations, prices, listings) per group commit",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        # -- the log and its followers
        self.log_head = Gauge(
            "dr_log_position",
            "Node follower position",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.log_head_position = Gauge(
            "dr_log_head_position",
            "Highest position recorded in the event store",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.follower_position = Gauge(
            "dr_follower_position",
            "Last log position a follower (projection, relay, alerts, notifications) "
            "handled; the lowest of the live workers",
            ["follower"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.follower_lag = Gauge(
            "dr_follower_lag_positions",
            "Log positions a follower is behind the head; the largest of the live workers",
            ["follower"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.projection_position = Gauge(
            "dr_projection_position",
            "Last log position a projection applied",
            ["projection"],
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.projection_lag = Gauge(
            "dr_projection_lag",
            "Log positions a projection is behind the head",
            ["projection"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.projection_stalled = Gauge(
            "dr_projection_stalled",
            "1 while a projection cannot apply the next entries (see /health)",
            ["projection"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.projection_failures = Gauge(
            "dr_projection_failures",
            "Batches a projection failed to apply since the process started",
            ["projection"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        # -- realtime
        self.delivery_latency = Histogram(
            "dr_realtime_delivery_latency_seconds",
            "From an entry's recording in the event store to the hub handing its frames to "
            "the sockets (one observation per entry delivered)",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self.ws_connections = Gauge(
            "dr_websocket_connections",
            "Open WebSocket connections",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ws_replays = Gauge(
            "dr_websocket_replays",
            "Subscriptions being brought up to date from the log (since, snapshot, behind)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ws_fell_behind = Gauge(
            "dr_websocket_fell_behind",
            "Times a subscription found its queue full and went on from the log, since start",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.ws_handshakes = Counter(
            "dr_websocket_handshakes",
            "WebSocket handshakes by result: accepted, or the close code of the refusal",
            ["result"],
            registry=registry,
        )
        self.ws_frames = Counter(
            "dr_websocket_frames_sent", "WebSocket messages sent to clients", registry=registry
        )
        self.ws_bytes = Counter(
            "dr_websocket_sent_bytes",
            "Payload bytes of the WebSocket messages sent to clients",
            registry=registry,
        )
        self.ws_closes = Counter(
            "dr_websocket_closes",
            "WebSocket connections the server closed, by close code",
            ["code"],
            registry=registry,
        )
        self.ws_slow_consumers = Counter(
            "dr_websocket_slow_consumer_closes",
            "WebSocket connections closed with 4008: the client stopped reading",
            registry=registry,
        )
        # -- notifications
        self.notification_attempts = Counter(
            "dr_notification_attempts",
            "Alert notification attempts by channel and outcome",
            ["channel", "outcome"],
            registry=registry,
        )
        self.subscription_acks = Counter(
            "dr_subscription_acks_written",
            "Durable subscriptions whose acknowledged position a write stored, failed to "
            "store (kept for the next write) or found deleted (gone)",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "dr_notification_dead_letters",
            "Alert notifications given up on (parked with the dead letters)",
            ["channel"],
            registry=registry,
        )
        # -- caches
        self.cache_lookups = Counter(
            "dr_cache_lookups",
            "Cache lookups by cache and result (hit, miss)",
            ["cache", "result"],
            registry=registry,
        )
        # -- reconciliation (ADR 0035)
        self.reconciliation_runs = Counter(
            "dr_reconciliation_runs",
            "Reconciliation runs of the read models against the log",
            registry=registry,
        )
        self.reconciliation_discrepancies = Gauge(
            "dr_reconciliation_discrepancies",
            "Keys that differed from the log in the last reconciliation run, by store "
            "(hot, history, upstream)",
            ["store"],
            registry=registry,
            multiprocess_mode="mostrecent",
        )
        self.reconciliation_last_run = Gauge(
            "dr_reconciliation_last_run_timestamp_seconds",
            "When the last reconciliation run completed (Unix seconds)",
            registry=registry,
            multiprocess_mode="max",
        )
        self.reconciliation_duration = Histogram(
            "dr_reconciliation_duration_seconds",
            "How long a reconciliation run took",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        # -- the process
        self.gc_pause = Histogram(
            "dr_gc_pause_seconds",
            "Pauses of the cyclic garbage collector by generation",
            ["generation"],
            buckets=GC_BUCKETS,
            registry=registry,
        )
        self.gc_pauses = GarbageCollectorPauses()
        self._process: _ProcessSamples | None = None
        if self.multiprocess:
            self._process = _ProcessSamples(registry)
        else:
            ProcessCollector(registry=registry)

    # -- Telemetry (the application's port) ---------------------------------------------

    def ingest_committed(self, seconds: float, items: int) -> None:
        self.commit_duration.observe(seconds)
        self.commit_items.observe(items)

    def entries_delivered(self, latencies: list[float]) -> None:
        observe = self.delivery_latency.observe
        for latency in latencies:
            observe(max(latency, 0.0))  # clocks of two hosts may disagree a little

    def notification_attempted(self, channel: str, outcome: str) -> None:
        self.notification_attempts.labels(channel, outcome).inc()
        if outcome == "dead_lettered":
            self.dead_letters.labels(channel).inc()

    def subscription_acks_written(self, outcome: str, subscriptions: int) -> None:
        self.subscription_acks.labels(outcome).inc(subscriptions)

    def cache_looked_up(self, cache: str, hit: bool) -> None:
        self.cache_lookups.labels(cache, "hit" if hit else "miss").inc()

    def reconciliation_completed(
        self, seconds: float, discrepancies: Mapping[str, int], completed_at: float
    ) -> None:
        self.reconciliation_runs.inc()
        self.reconciliation_duration.observe(seconds)
        self.reconciliation_last_run.set(completed_at)
        for store in ("hot", "history", "upstream"):
            self.reconciliation_discrepancies.labels(store).set(discrepancies.get(store, 0))

    # -- the entrypoints' events ---------------------------------------------------------

    def request_answered(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_duration.labels(route, method, f"{status // 100}xx").observe(seconds)

    def sockets_sent(
        self,
        frames: int,
        size: int,
        closes: Iterable[tuple[int, int]],
        handshakes: Iterable[tuple[str, int]],
    ) -> None:
        """Add what the socket gateway tallied since the last sample."""
        if frames:
            self.ws_frames.inc(frames)
        if size:
            self.ws_bytes.inc(size)
        for code, count in closes:
            self.ws_closes.labels(str(code)).inc(count)
            if code == 4008:
                self.ws_slow_consumers.inc(count)
        for result, count in handshakes:
            self.ws_handshakes.labels(result).inc(count)

    def sample_process(self) -> None:
        """Move collector pauses into the histogram; in multiprocess mode also write this
        worker's ``process_*`` values."""
        for generation, seconds in self.gc_pauses.drain():
            self.gc_pause.labels(str(generation)).observe(seconds)
        if self._process is not None:
            self._process.sample()

    # -- lifecycle and exposition ---------------------------------------------------------

    def start(self) -> None:
        self.gc_pauses.install()

    def stop(self) -> None:
        """This worker is going away: its live gauges stop counting (multiprocess mode)."""
        self.gc_pauses.uninstall()
        directory = multiprocess_dir()
        if self.multiprocess and directory is not None:
            mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]

    def scrape(self) -> bytes:
        """The text exposition: this app's registry, or every worker's files."""
        directory = multiprocess_dir()
        if not self.multiprocess or directory is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
