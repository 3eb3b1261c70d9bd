"""The audit trail's recording: outcomes, which requests are audited, the group commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from defi_realtime.application.audit import AuditEntry, AuditJournal
from defi_realtime.domain.audit import AUDIT_ACTIONS, outcome_of
from defi_realtime.entrypoints.api import create_app
from defi_realtime.entrypoints.audit_api import AUDITED, AuditRequests
from defi_realtime.entrypoints.operations import OperationRoute
from defi_realtime.entrypoints.settings import Settings

# POST operations that only read (a query in a body, a simulation): not audited.
READ_ONLY_POSTS = {"aggregateQuery", "backtestAlertRule"}


def entry(n: int) -> AuditEntry:
    return AuditEntry(action="ingest", at=float(n), status=200, outcome="ok")


def test_outcomes() -> None:
    assert outcome_of(200) == "ok"
    assert outcome_of(304) == "ok"
    assert outcome_of(401) == "rejected: 401"
    assert outcome_of(422) == "rejected: 422"
    assert outcome_of(503) == "failed: 503"


@pytest.fixture
def routes(tmp_path: Path) -> list[OperationRoute]:
    app = create_app(Settings(data_dir=tmp_path / "data"))  # builds, opens nothing
    return [route for route in app.routes if isinstance(route, OperationRoute)]


def test_every_state_changing_operation_is_audited(routes: list[OperationRoute]) -> None:
    changing = {
        operation.operation_id
        for route in routes
        for operation in route.operations
        if operation.method not in ("GET", "HEAD")
    }
    assert changing - READ_ONLY_POSTS == set(AUDITED)
    assert set(AUDITED.values()) <= AUDIT_ACTIONS


def scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "/v2/ingest", "ingest"),
        ("POST", "/v2/alerts", "alert_rule.create"),
        ("PUT", "/v2/alerts/0b0e7b0a-0000-4000-8000-000000000000", "alert_rule.update"),
        ("DELETE", "/v2/alerts/not-even-an-id", "alert_rule.delete"),
        ("POST", "/v2/alerts/x/pause", "alert_rule.pause"),
        ("POST", "/v2/alerts/x/dead-letters/redrive", "alert_rule.redrive"),
        ("DELETE", "/v2/subscriptions/x", "subscription.delete"),
        ("POST", "/v2/auth/token", "auth.token"),
        ("GET", "/v2/alerts", None),
        ("POST", "/v2/query", None),
        ("POST", "/v2/alerts/x/backtest", None),
        ("POST", "/v2/nowhere", None),
        ("PATCH", "/v2/alerts", None),  # not an operation of the route: 405, nothing done
    ],
)
def test_the_action_of_a_request(
    routes: list[OperationRoute], method: str, path: str, action: str | None
) -> None:
    middleware = AuditRequests(app=lambda *_: None, routes=routes, proxies=())  # type: ignore[arg-type]
    assert middleware.action(scope(method, path)) == action


async def test_concurrent_records_share_a_commit_and_wait_for_it() -> None:
    saved: list[list[AuditEntry]] = []
    gate = threading.Event()

    def save(entries: Sequence[AuditEntry]) -> None:
        gate.wait(5)
        saved.append(list(entries))

    journal = AuditJournal(save)
    first = asyncio.create_task(journal.record(entry(0)))
    await asyncio.sleep(0.05)  # the first group is being written (held at the gate)
    others = [asyncio.create_task(journal.record(entry(n))) for n in range(1, 50)]
    await asyncio.sleep(0.05)
    # Nothing is acknowledged before it is stored.
    assert not first.done()
    assert not any(task.done() for task in others)
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *others), 5)
    assert [len(group) for group in saved] == [1, 49]
    assert sorted(item.at for group in saved for item in group) == [float(n) for n in range(50)]
    await journal.drain()


async def test_a_failed_commit_fails_each_of_its_records() -> None:
    calls = 0

    def save(entries: Sequence[AuditEntry]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")

    journal = AuditJournal(save)
    results = await asyncio.gather(
        journal.record(entry(1)), journal.record(entry(2)), return_exceptions=True
    )
    assert [type(result) for result in results] == [OSError, OSError]
    # The journal goes on: the next record is written.
    await asyncio.wait_for(journal.record(entry(3)), 5)
    assert calls == 2


async def test_a_cancelled_request_does_not_cancel_the_write() -> None:
    saved: list[AuditEntry] = []
    gate = threading.Event()

    def save(entries: Sequence[AuditEntry]) -> None:
        gate.wait(5)
        saved.extend(entries)

    journal = AuditJournal(save)
    task = asyncio.create_task(journal.record(entry(1)))
    await asyncio.sleep(0.05)
    task.cancel()
    gate.set()
    await asyncio.wait_for(journal.drain(), 5)
    assert [item.at for item in saved] == [1.0]


class _State:
    def __init__(self, journal: AuditJournal) -> None:
        self.audit_journal = journal


class _App:
    def __init__(self, journal: AuditJournal) -> None:
        self.state = _State(journal)


async def test_a_request_that_crashes_is_recorded_as_failed(routes: list[OperationRoute]) -> None:
    saved: list[AuditEntry] = []
    journal = AuditJournal(saved.extend)

    async def crashing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    middleware = AuditRequests(app=crashing, routes=routes, proxies=())
    request = scope("POST", "/v2/alerts") | {"app": _App(journal), "client": ("10.0.0.7", 5)}
    with pytest.raises(RuntimeError):
        await middleware(request, None, None)  # type: ignore[arg-type]
    assert [(e.action, e.status, e.outcome, e.client) for e in saved] == [
        ("alert_rule.create", 500, "failed: 500", "10.0.0.7")
    ]


async def test_the_record_is_stored_before_the_answer_starts(
    routes: list[OperationRoute],
) -> None:
    events: list[str] = []
    journal = AuditJournal(lambda entries: events.append(f"stored {entries[0].status}"))

    async def answering(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])

    middleware = AuditRequests(app=answering, routes=routes, proxies=())
    await middleware(scope("POST", "/v2/ingest") | {"app": _App(journal)}, None, send)  # type: ignore[arg-type]
    assert events == ["stored 201", "http.response.start", "http.response.body"]
