"""The role table: what a process runs under given settings (docs/architecture.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from defi_realtime.entrypoints.roles import (
    ANOMALIES_LOCK,
    PROJECTIONS_LOCK,
    RECONCILE_LOCK,
    RELAY_LOCK,
    RETENTION_LOCK,
    WEBHOOKS_LOCK,
    WORKERS,
    Follower,
    Stage,
    describe,
    loops,
    plan,
)
from defi_realtime.entrypoints.settings import Settings


def settings(tmp_path: Path, **urls: str) -> Settings:
    return Settings(data_dir=tmp_path, **urls)


def placed(process: str, config: Settings) -> dict[str, tuple[Follower, str | None]]:
    return {
        p.role.name: (p.follower, None if p.lock is None else p.lock.name)
        for p in plan(process, config)
    }


def test_serve_embedded_runs_everything_on_the_node_unelected(tmp_path: Path) -> None:
    roles = placed("serve", settings(tmp_path))
    assert roles == {
        "relay": (Follower.STORE, None),
        "hot": (Follower.NODE, None),
        "realtime": (Follower.NODE, None),
        "history": (Follower.NODE, None),
        "alerts": (Follower.OWN, None),
        "anomalies": (Follower.OWN, None),
        "notifications": (Follower.OWN, None),
        "reconcile": (Follower.TIMER, None),
        "webhooks": (Follower.TIMER, None),
    }


def test_with_redis_the_node_keeps_its_own_fold_before_the_hub(tmp_path: Path) -> None:
    roles = placed("serve", settings(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0"))
    assert roles["hot"] == (Follower.PROJECTOR, None)  # shared: no election without PostgreSQL
    assert roles["live"] == (Follower.NODE, None)
    [node] = [
        loop
        for loop in loops(plan("serve", settings(tmp_path, REDIS_URL="redis://x")))
        if loop.follower is Follower.NODE
    ]
    assert [(role.name, role.stage) for role in node.roles] == [
        ("live", Stage.BEFORE_HUB),
        ("realtime", Stage.HUB),
        ("history", Stage.AFTER_HUB),
    ]


def test_with_every_service_shared_work_is_elected(tmp_path: Path) -> None:
    config = settings(
        tmp_path,
        DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/0",
        AMQP_URL="amqp://guest:guest@127.0.0.1:5672/",
    )
    roles = placed("serve", config)
    assert roles["relay"] == (Follower.STORE, RELAY_LOCK.name)
    assert roles["hot"] == roles["history"] == (Follower.PROJECTOR, PROJECTIONS_LOCK.name)
    assert roles["live"] == (Follower.NODE, None)  # every node: its own frames' facts
    assert "notifications" not in roles  # a broker: `worker notifications` delivers
    assert placed("projections", config).keys() == {"hot", "history"}
    assert roles["anomalies"] == (Follower.OWN, ANOMALIES_LOCK.name)
    assert placed("alerts", config).keys() == {"alerts", "anomalies"}


def test_every_worker_has_a_plan_and_nothing_else_does(tmp_path: Path) -> None:
    config = settings(tmp_path)
    for worker in WORKERS:
        assert plan(worker, config)
        assert all(row["role"] for row in describe(worker, config))
    with pytest.raises(ValueError, match="unknown process"):
        plan("everything", config)


def test_reconcile_is_planned_in_serve_and_elected_in_workers(tmp_path: Path) -> None:
    shared = settings(tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test")
    assert placed("serve", shared)["reconcile"] == (Follower.TIMER, RECONCILE_LOCK.name)
    # Beside it the retention of the history's detail (ADR 0047), idle while unset.
    assert placed("reconcile", shared) == {
        "reconcile": (Follower.TIMER, RECONCILE_LOCK.name),
        "retention": (Follower.TIMER, RETENTION_LOCK.name),
    }
    [loop, _] = loops(plan("reconcile", shared))
    assert (loop.name, loop.lock) == ("reconcile", RECONCILE_LOCK)
    # Its own lock: it never waits for, nor holds up, another role's election.
    others = {p.lock for p in plan("serve", shared) if p.role.name != "reconcile"}
    assert RECONCILE_LOCK not in others


def test_subscription_webhooks_run_in_serve_elected_on_their_own_lock(tmp_path: Path) -> None:
    shared = settings(tmp_path, DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test")
    assert placed("serve", shared)["webhooks"] == (Follower.TIMER, WEBHOOKS_LOCK.name)
    # Its filters read the node's fold of the log: no worker process runs it.
    assert all("webhooks" not in placed(worker, shared) for worker in WORKERS)
    others = {p.lock for p in plan("serve", shared) if p.role.name != "webhooks"}
    assert WEBHOOKS_LOCK not in others


def test_retention_runs_in_serve_only_when_set(tmp_path: Path) -> None:
    assert "retention" not in placed("serve", settings(tmp_path))
    kept = settings(tmp_path, HISTORY_DETAIL_RETENTION_DAYS="90")
    assert placed("serve", kept)["retention"] == (Follower.TIMER, None)
