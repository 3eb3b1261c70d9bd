"""Contract of the audit trail's stores, run on the embedded ones (SQLite files) and the
production ones (PostgreSQL): the audit log (``AuditLog``, its own notification sequence
beside the main log's) and the ``audit_records`` read model (``SqlAuditRecords``) that
``AuditTrail`` fills from it and queries with filters.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy.engine import make_url

from defi_realtime.adapters.sql_audit_records import SqlAuditRecords
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.audit import AuditEntry, AuditLog, AuditQuery
from defi_realtime.application.audit_trail import AuditTrail
from defi_realtime.entrypoints.container import _audit_log
from defi_realtime.entrypoints.settings import Settings
from tests.services import postgres_url, throwaway_schema

T0 = 1_700_000_000.0


@dataclass
class Stores:
    main_env: dict[str, str]
    records_url: str
    data_dir: Path

    def audit_log(self) -> Iterator[AuditLog]:
        # As the container opens it: the main log's settings, its own tables or file.
        return _audit_log(self.main_env, self.data_dir)


def entry(
    account: str | None, action: str, at: float, *, key: str | None = None, status: int = 200
) -> AuditEntry:
    outcome = "ok" if status < 400 else f"rejected: {status}"
    return AuditEntry(
        action=action,
        at=at,
        status=status,
        outcome=outcome,
        account_id=account,
        key_id=key,
        request_id=uuid4().hex,
        client="127.0.0.1",
        method="POST",
        path="/v2/alerts",
    )


class AuditContract:
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Stores]:
        raise NotImplementedError

    @pytest.fixture
    def trail(self, stores: Stores) -> Iterator[tuple[AuditLog, AuditTrail]]:
        opened = stores.audit_log()
        log = next(opened)
        records = SqlAuditRecords(stores.records_url)
        try:
            yield log, AuditTrail(log, records)
        finally:
            records.close()
            opened.close()

    def test_an_account_sees_only_its_own_records(self, trail: tuple[AuditLog, AuditTrail]) -> None:
        log, audit = trail
        alice, bob = str(uuid4()), str(uuid4())
        log.record([entry(alice, "alert_rule.create", T0), entry(bob, "ingest", T0 + 1)])
        log.record([entry(None, "ingest", T0 + 2, status=401)])

        mine = audit.query(AuditQuery(account_id=alice)).records
        assert [(view.entry.account_id, view.entry.action) for view in mine] == [
            (alice, "alert_rule.create")
        ]
        theirs = audit.query(AuditQuery(account_id=bob)).records
        assert [view.entry.account_id for view in theirs] == [bob]
        # An actor filter cannot widen an account's view to another account's records.
        assert audit.query(AuditQuery(account_id=alice, actor=bob)).records == []
        everyone = audit.query(AuditQuery()).records
        assert [view.entry.at for view in everyone] == [T0 + 2, T0 + 1, T0]  # newest first
        assert everyone[0].entry.outcome == "rejected: 401"
        assert everyone[0].entry.account_id is None

    def test_filters_by_actor_action_and_time(self, trail: tuple[AuditLog, AuditTrail]) -> None:
        log, audit = trail
        account, key, other_key = str(uuid4()), str(uuid4()), str(uuid4())
        log.record(
            [
                entry(account, "alert_rule.create", T0, key=key),
                entry(account, "alert_rule.delete", T0 + 10, key=other_key),
                entry(account, "ingest", T0 + 20, key=key),
                entry(account, "alert_rules.create", T0 + 30, key=key),  # not the family
            ]
        )

        def actions(query: AuditQuery) -> list[str]:
            return [view.entry.action for view in audit.query(query).records]

        assert actions(AuditQuery(actor=other_key)) == ["alert_rule.delete"]
        assert len(actions(AuditQuery(actor=account))) == 4
        assert actions(AuditQuery(action="alert_rule")) == [
            "alert_rule.delete",
            "alert_rule.create",
        ]
        assert actions(AuditQuery(action="alert_rule.create")) == ["alert_rule.create"]
        assert actions(AuditQuery(since=T0 + 10, until=T0 + 20)) == [
            "ingest",
            "alert_rule.delete",
        ]
        assert actions(AuditQuery(actor=key, since=T0 + 5)) == ["alert_rules.create", "ingest"]

    def test_pages_continue_where_the_last_one_ended(
        self, trail: tuple[AuditLog, AuditTrail]
    ) -> None:
        log, audit = trail
        account = str(uuid4())
        log.record([entry(account, "ingest", T0 + n) for n in range(7)])
        seen: list[float] = []
        before = None
        for _ in range(10):
            page = audit.query(AuditQuery(account_id=account, limit=3, before=before))
            seen.extend(view.entry.at for view in page.records)
            if page.next is None:
                break
            before = page.next
        assert seen == [T0 + n for n in reversed(range(7))]

    def test_catching_up_twice_at_once_holds_each_record_once(
        self, trail: tuple[AuditLog, AuditTrail], stores: Stores
    ) -> None:
        log, audit = trail
        log.record([entry(str(uuid4()), "ingest", T0 + n) for n in range(300)])
        other = SqlAuditRecords(stores.records_url)
        try:
            racers = [AuditTrail(log, other), audit]
            threads = [threading.Thread(target=racer.catch_up) for racer in racers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert other.position() == log.head()
        finally:
            other.close()
        page = audit.query(AuditQuery(limit=1_000))
        assert len(page.records) == 300
        assert len({view.position for view in page.records}) == 300

    def test_audit_records_never_move_the_main_log(
        self, trail: tuple[AuditLog, AuditTrail], stores: Stores
    ) -> None:
        log, audit = trail
        main = DefiRealtime(env=stores.main_env)
        try:
            main.issue_api_key("audited")
            head = main.recorder.max_notification_id()
            log.record([entry(str(uuid4()), "ingest", T0, status=422)])
            assert main.recorder.max_notification_id() == head
            assert log.head() >= 1
            # ...and the main log's records are not audit records.
            assert audit.query(AuditQuery()).records[0].entry.outcome == "rejected: 422"
            assert len(audit.query(AuditQuery()).records) == 1
        finally:
            main.close()

    def test_finds_the_request_that_recorded_a_main_log_position(
        self, trail: tuple[AuditLog, AuditTrail]
    ) -> None:
        log, audit = trail
        alice, bob = str(uuid4()), str(uuid4())
        # Two requests committed in one group: their positions interleave.
        ingested = [
            replace(entry(alice, "ingest", T0), detail={"recorded": [[10, 11], [14, 14]]}),
            replace(entry(bob, "ingest", T0), detail={"recorded": [[12, 13], [15, 16]]}),
        ]
        log.record([*ingested, entry(alice, "alert_rule.create", T0 + 1)])

        def who(position: int, account: str | None = None) -> list[str | None]:
            query = AuditQuery(account_id=account, recorded=position)
            return [view.entry.account_id for view in audit.query(query).records]

        assert [who(n) for n in range(10, 17)] == [
            [alice],
            [alice],
            [bob],
            [bob],
            [alice],
            [bob],
            [bob],
        ]
        assert who(9) == who(17) == []
        # An account finds only its own requests.
        assert who(12, alice) == []
        assert who(12, bob) == [bob]


class TestEmbeddedAudit(AuditContract):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Stores:
        settings = Settings(data_dir=tmp_path / "data")
        settings.data_dir.mkdir(parents=True)
        return Stores(settings.event_store_env, settings.history_url, settings.data_dir)


class TestPostgresAudit(AuditContract):
    @pytest.fixture
    def stores(self, tmp_path: Path) -> Iterator[Stores]:
        with throwaway_schema("audit") as url:
            options = make_url(url).query["options"]
            assert isinstance(options, str)
            schema = options.removeprefix("-csearch_path=")
            env = Settings(database_url=postgres_url()).event_store_env | {
                "POSTGRES_SCHEMA": schema
            }
            yield Stores(env, url, tmp_path)


def test_the_embedded_audit_log_has_its_own_file_and_relaxed_commits(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    opened = _audit_log(settings.event_store_env, settings.data_dir)
    log = next(opened)
    try:
        log.record([entry(None, "ingest", T0)])
        assert (settings.data_dir / "audit.sqlite").exists()
        assert not (settings.data_dir / "events.sqlite").exists()  # the main log untouched
        datastore = log.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection(commit=True) as connection, connection.cursor() as cursor:
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 1  # NORMAL: synced at checkpoints (ADR 0041)
    finally:
        opened.close()
