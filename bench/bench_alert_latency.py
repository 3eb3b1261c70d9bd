"""Alert trigger -> webhook latency: from just before the ``POST /v2/ingest`` that flips a
rule's condition to the notification's arrival at a webhook receiver.

    python bench/bench_alert_latency.py [--transitions 200] [--mode embedded|rabbitmq|both]
        [--poll-interval 0.05] [--repeat 1]

For each mode this script (the load generator, a separate process from the server):

1. creates a fresh ``DATA_DIR``, a key (``defi-realtime keys create``) and starts
   ``defi-realtime serve`` on 127.0.0.1 as a subprocess. ``embedded``: SQLite, in-process
   fan-out and notification queue (delivery inside ``serve``). ``rabbitmq``: the same SQLite
   store, but the fan-out and the notification work queue on RabbitMQ (``AMQP_URL`` or
   ``TEST_AMQP_URL``, default guest@127.0.0.1), with delivery in a separate
   ``defi-realtime worker notifications`` process; its exchange and queues get unique names
   and are deleted afterwards;
2. lists one protocol and creates a rule over REST (``POST /v2/alerts``): TVL above 1.5,
   cooldown 0, one webhook channel to a receiver in this process (``http.server`` thread;
   ``ALLOW_PRIVATE_WEBHOOKS=true`` for the servers);
3. ingests ``--transitions`` observations alternating 2.0 / 1.0, one at a time: each one
   fires or resolves the rule. It times from just before the POST to the arrival of the
   request whose ``X-Idempotency-Key`` is that transition's (``<rule>:<n>:0``), then sends
   the next. Reference in the same run: the POST round trip itself (validated, committed,
   answered).

Processes are stopped by PID (SIGTERM, then SIGKILL) in a ``finally``; counts are bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import (
    HOST,
    CliProcess,
    cpu_pressure,
    create_key,
    embedded_env,
    free_port,
    summary,
)

# The receiver is the test suite's (one implementation of "a customer's endpoint").
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.webhook_receiver import WebhookReceiver

DELIVERY_TIMEOUT = 10.0
MAX_TRANSITIONS = 5_000
SLUG = "bench-alerts"
T0 = 1_700_000_000


def describe(values: list[float]) -> str:
    figures = summary(values)
    return f"n={len(values)} " + " ".join(
        f"{name}={1000 * figures[name]:.1f} ms" for name in ("p50", "p95", "p99", "max")
    )


@dataclass
class Deployment:
    mode: str
    work_dir: Path
    env: dict[str, str]
    processes: list[CliProcess] = field(default_factory=list)

    def spawn(self, name: str, *args: str) -> CliProcess:
        log_path = self.work_dir / f"{name}.log"
        process = CliProcess(name, args, env=self.env, log_path=log_path, cwd=self.work_dir)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def amqp_url() -> str:
    return os.environ.get("AMQP_URL") or os.environ.get(
        "TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"
    )


@contextlib.contextmanager
def deployment(mode: str, poll_interval: float) -> Iterator[Deployment]:
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        work_dir = Path(tmp)
        env = embedded_env()
        env.update(
            {
                "DATA_DIR": str(work_dir / "data"),
                "POLL_INTERVAL": str(poll_interval),
                "ALLOW_PRIVATE_WEBHOOKS": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        token = uuid.uuid4().hex[:10]
        if mode == "rabbitmq":
            env.update(
                {
                    "AMQP_URL": amqp_url(),
                    "AMQP_EXCHANGE": f"defi-realtime.bench.{token}",
                    "AMQP_NOTIFICATIONS": f"defi-realtime.bench.{token}.notifications",
                }
            )
        deployed = Deployment(mode, work_dir, env)
        try:
            yield deployed
        finally:
            deployed.stop()
            if mode == "rabbitmq":
                asyncio.run(delete_rabbit_topology(env))


async def delete_rabbit_topology(env: dict[str, str]) -> None:
    import aio_pika

    from defi_realtime.adapters.rabbit_notification_queue import RabbitNotificationQueue
    from defi_realtime.application.delivery import RetryPolicy
    from defi_realtime.entrypoints.settings import Settings

    settings = Settings(**{"AMQP_NOTIFICATIONS": env["AMQP_NOTIFICATIONS"]})
    policy = RetryPolicy(
        max_attempts=settings.notify_max_attempts,
        base_delay=settings.notify_backoff_base,
        max_delay=settings.notify_backoff_max,
        jitter=settings.notify_jitter,
    )
    topology = RabbitNotificationQueue(env["AMQP_URL"], policy, env["AMQP_NOTIFICATIONS"])
    connection = await aio_pika.connect(env["AMQP_URL"], timeout=10)
    try:
        channel = await connection.channel()
        for name in topology.queue_names:
            await channel.queue_delete(name)
        await channel.exchange_delete(topology.name)
        await channel.exchange_delete(env["AMQP_EXCHANGE"])
    finally:
        await connection.close()


def run_mode(mode: str, transitions: int, poll_interval: float) -> tuple[list[float], list[float]]:
    with deployment(mode, poll_interval) as deployed, WebhookReceiver() as receiver:
        data_dir = Path(deployed.env["DATA_DIR"])
        data_dir.mkdir(parents=True)
        key = create_key(deployed.env, "--tier", "enterprise", cwd=deployed.work_dir)
        port = free_port()
        server = deployed.spawn(
            "serve", "serve", "--host", HOST, "--port", str(port), "--log-level", "warning"
        )
        if mode == "rabbitmq":
            deployed.spawn("worker", "worker", "notifications")
        headers = {"X-API-Key": key}
        server.wait_healthy(port)
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=10.0) as client:
            listing = {"protocol": SLUG, "name": "Bench Alerts", "value": 1.0, "observed_at": T0}
            client.post(
                "/v2/ingest", json={"observations": [listing]}, headers=headers
            ).raise_for_status()
            created = client.post(
                "/v2/alerts",
                json={
                    "name": "bench",
                    "target": {"protocol": SLUG, "metric": "tvl"},
                    "condition": {"kind": "threshold", "direction": "above", "value": 1.5},
                    "channels": [{"kind": "webhook", "url": receiver.url, "secret": "bench"}],
                    "cooldown": 0,
                },
                headers=headers,
            )
            created.raise_for_status()
            rule_id = created.json()["id"]
            time.sleep(1.0)  # let the evaluator index the new rule before the first flip
            latencies: list[float] = []
            posts: list[float] = []
            for n in range(1, transitions + 1):
                value = 2.0 if n % 2 else 1.0  # odd: fires, even: resolves
                item = {"protocol": SLUG, "value": value, "observed_at": T0 + n}
                expected = f"{rule_id}:{n}:0"
                started = time.perf_counter()
                response = client.post("/v2/ingest", json={"observations": [item]}, headers=headers)
                posts.append(time.perf_counter() - started)
                response.raise_for_status()
                received = receiver.wait_for_request(
                    lambda r, key=expected: r.headers.get("x-idempotency-key") == key,
                    DELIVERY_TIMEOUT,
                )
                latencies.append(received.arrived_at - started)
            time.sleep(0.5)  # anything late (a duplicate) would arrive now
        keys = [r.headers.get("x-idempotency-key") for r in receiver.requests]
        if len(keys) != len(set(keys)) or len(keys) != transitions:
            print(f"{mode}: {len(keys)} requests for {transitions} transitions (duplicates?)")
        return latencies, posts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transitions", type=int, default=200)
    parser.add_argument("--mode", choices=("embedded", "rabbitmq", "both"), default="both")
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 6))
    args = parser.parse_args()
    if not 1 <= args.transitions <= MAX_TRANSITIONS:
        parser.error(f"--transitions must be between 1 and {MAX_TRANSITIONS}")
    modes = ["embedded", "rabbitmq"] if args.mode == "both" else [args.mode]
    print(
        f"# alert delivery latency, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {args.transitions} transitions, one at a time"
    )
    for repeat in range(1, args.repeat + 1):
        for mode in modes:
            latencies, posts = run_mode(mode, args.transitions, args.poll_interval)
            print(f"[{repeat}] {mode:9} trigger -> webhook received: {describe(latencies)}")
            print(f"[{repeat}] {mode:9} POST /v2/ingest round trip:  {describe(posts)}")
            print(f"[{repeat}] {mode:9} {cpu_pressure() or 'CPU pressure unknown'}")


if __name__ == "__main__":
    main()
