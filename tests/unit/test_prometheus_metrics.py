"""The Prometheus adapter: what each report does to the exposition."""

from __future__ import annotations

import gc
import threading
import time
from types import SimpleNamespace

import pytest

from defi_realtime.adapters.prometheus_metrics import GarbageCollectorPauses, PrometheusMetrics
from defi_realtime.entrypoints import observability
from tests.e2e.served import metric_samples


def _samples(metrics: PrometheusMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return metric_samples(metrics.scrape().decode())


def test_collector_pauses_are_timed_by_generation_and_drained_by_the_sampler() -> None:
    metrics = PrometheusMetrics()
    metrics.start()
    try:
        gc.collect(2)
        gc.collect(0)
        assert {generation for generation, _ in metrics.gc_pauses.pauses} >= {0, 2}
        metrics.sample_process()
        assert not metrics.gc_pauses.pauses
    finally:
        metrics.stop()
    samples = _samples(metrics)
    full = ("dr_gc_pause_seconds_count", frozenset({("generation", "2")}))
    assert samples[full] >= 1
    assert samples[("dr_gc_pause_seconds_sum", frozenset({("generation", "2")}))] > 0
    # Uninstalled: later collections are not timed.
    gc.collect(2)
    metrics.sample_process()
    assert _samples(metrics)[full] == samples[full]


def test_a_pause_without_its_start_is_ignored() -> None:
    pauses = GarbageCollectorPauses()
    pauses("stop", {"generation": 1})
    assert not pauses.pauses


def test_dead_letters_and_slow_consumer_closes_have_their_own_counters() -> None:
    metrics = PrometheusMetrics()
    metrics.notification_attempted("webhook", "failed")
    metrics.notification_attempted("webhook", "dead_lettered")
    metrics.notification_attempted("email", "delivered")
    metrics.sockets_sent(3, 120, [(4008, 2), (4000, 1)], [("accepted", 4), ("4001", 1)])
    samples = _samples(metrics)
    assert samples[("dr_notification_dead_letters_total", frozenset({("channel", "webhook")}))] == 1
    attempts = "dr_notification_attempts_total"
    failed = frozenset({("channel", "webhook"), ("outcome", "failed")})
    assert samples[(attempts, failed)] == 1
    assert samples[("dr_websocket_slow_consumer_closes_total", frozenset())] == 2
    assert samples[("dr_websocket_closes_total", frozenset({("code", "4008")}))] == 2
    assert samples[("dr_websocket_closes_total", frozenset({("code", "4000")}))] == 1
    assert samples[("dr_websocket_frames_sent_total", frozenset())] == 3
    assert samples[("dr_websocket_sent_bytes_total", frozenset())] == 120
    assert samples[("dr_websocket_handshakes_total", frozenset({("result", "4001")}))] == 1


def test_acknowledgement_writes_are_counted_per_subscription_by_outcome() -> None:
    metrics = PrometheusMetrics()
    metrics.subscription_acks_written("stored", 3)
    metrics.subscription_acks_written("failed", 2)
    metrics.subscription_acks_written("stored", 1)
    samples = _samples(metrics)
    written = "dr_subscription_acks_written_total"
    assert samples[(written, frozenset({("outcome", "stored")}))] == 4
    assert samples[(written, frozenset({("outcome", "failed")}))] == 2


def test_requests_are_timed_by_route_method_and_status_class() -> None:
    metrics = PrometheusMetrics()
    metrics.request_answered("/v2/protocols/{slug:str}", "GET", 404, 0.3)
    metrics.request_answered("/v2/protocols/{slug:str}", "GET", 200, 0.01)
    samples = _samples(metrics)
    route = ("route", "/v2/protocols/{slug:str}")
    slow = frozenset({route, ("method", "GET"), ("status_class", "4xx"), ("le", "0.25")})
    assert samples[("dr_http_request_duration_seconds_bucket", slow)] == 0
    slow_inf = frozenset({route, ("method", "GET"), ("status_class", "4xx"), ("le", "+Inf")})
    assert samples[("dr_http_request_duration_seconds_bucket", slow_inf)] == 1
    assert samples[("dr_http_requests_total", frozenset({route, ("status", "200")}))] == 1
    # Single-process mode: the library's process collector.
    assert samples[("process_resident_memory_bytes", frozenset())] > 0


async def test_a_sample_does_not_wait_for_a_slow_event_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()

    def slow_head() -> int:
        release.wait(5)
        return 7

    hub = SimpleNamespace(
        connections={object(), object()}, replays=SimpleNamespace(under_way=lambda: 0)
    )
    hub.fell_behind = 0
    node = SimpleNamespace(
        hub=hub,
        follower=None,
        runners={},
        followers=[],
        relay=None,
        event_log=SimpleNamespace(head=slow_head),
    )
    monkeypatch.setattr(observability, "HEAD_TIMEOUT", 0.2)
    metrics = PrometheusMetrics()
    started = time.monotonic()
    try:
        await observability.sample(metrics, node, None)  # type: ignore[arg-type]
    finally:
        release.set()
    assert time.monotonic() - started < 2
    samples = _samples(metrics)
    assert samples[("dr_websocket_connections", frozenset())] == 2
    assert samples[("dr_log_head_position", frozenset())] == 0  # not reached: not set
