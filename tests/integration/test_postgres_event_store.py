"""The fast PostgreSQL recorders pass eventsourcing's own recorder test cases.

Each test gets a fresh, uniquely named schema (created in ``setUp``, dropped with CASCADE in
``tearDown``) so it never collides with other tests sharing the ``test`` database, and so the
base cases' expectations about notification IDs starting at 1 hold. ``postgres_url()`` skips
locally and fails under ``CI=true`` when PostgreSQL is unreachable.

eventsourcing's abstract cases are reached through the module (``es_cases.X``), not imported
by name: pytest collects every ``unittest.TestCase`` subclass in a module namespace, and the
abstract bases cannot be instantiated.
"""

from __future__ import annotations

import time
from threading import Barrier, Thread
from typing import Any, ClassVar, Literal
from unittest import TestCase
from urllib.parse import unquote, urlparse
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    DataError,
    InfrastructureFactory,
    IntegrityError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.tests import persistence as es_cases
from psycopg.adapt import PyFormat, Transformer
from psycopg.sql import SQL, Identifier

from defi_realtime.adapters.postgres_event_store import (
    FastPostgresAggregateRecorder,
    FastPostgresApplicationRecorder,
    FastPostgresFactory,
    FastPostgresProcessRecorder,
    _binary_columns,
    _column_arrays,
)
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import IngestResult, build_batch
from defi_realtime.application.ports import BulkEventReader
from tests.services import postgres_url

pytestmark = pytest.mark.postgres

PERSISTENCE_MODULE = "defi_realtime.adapters.postgres_event_store"
TOPIC = "defi_realtime.domain.protocol:Protocol.MetricRecorded"
T0 = 1_765_000_000.0


def _connection_params(url: str) -> dict[str, str]:
    parsed = urlparse(url)
    return {
        "dbname": parsed.path.lstrip("/") or "postgres",
        "host": parsed.hostname or "127.0.0.1",
        "port": str(parsed.port or 5432),
        "user": unquote(parsed.username or "postgres"),
        "password": unquote(parsed.password or ""),
    }


class PostgresSchemaCase(TestCase):
    """A PostgresDatastore bound to a throwaway schema."""

    originator_id_type: ClassVar[Literal["uuid", "text"]] = "uuid"
    # >1 so concurrent-writer cases really race inside PostgreSQL, not in the pool queue.
    pool_size: ClassVar[int] = 4

    def setUp(self) -> None:
        super().setUp()
        self.url = postgres_url()
        self.params = _connection_params(self.url)
        self.schema = f"es_fast_{uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(self.schema)))
        self.addCleanup(self._drop_schema)
        self.datastore = PostgresDatastore(
            self.params["dbname"],
            self.params["host"],
            self.params["port"],
            self.params["user"],
            self.params["password"],
            pool_size=self.pool_size,
            max_overflow=0,
            schema=self.schema,
            originator_id_type=self.originator_id_type,
        )
        # Cleanups run LIFO: the pool is closed before its schema is dropped.
        self.addCleanup(self.datastore.close)

    def _drop_schema(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(self.schema)))

    def new_app_recorder(self) -> FastPostgresApplicationRecorder:
        recorder = FastPostgresApplicationRecorder(self.datastore, events_table_name="events")
        recorder.create_table()
        return recorder

    def stored_events(self, n: int, per_originator: int = 5) -> list[StoredEvent]:
        """``n`` realistic events: ``n / per_originator`` originators, several versions each."""
        ids = [self.new_originator_id() for _ in range(max(1, n // per_originator))]
        return [
            StoredEvent(ids[i % len(ids)], i // len(ids) + 1, TOPIC, b'{"v":%d}' % i)
            for i in range(n)
        ]

    def new_originator_id(self) -> UUID | str:
        return uuid4()

    def app_env(self, **extra: str) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": PERSISTENCE_MODULE,
            "POSTGRES_DBNAME": self.params["dbname"],
            "POSTGRES_HOST": self.params["host"],
            "POSTGRES_PORT": self.params["port"],
            "POSTGRES_USER": self.params["user"],
            "POSTGRES_PASSWORD": self.params["password"],
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "0",
            **extra,
        }


# -- eventsourcing's own recorder test cases ----------------------------------------------


class TestFastAggregateRecorder(PostgresSchemaCase, es_cases.AggregateRecorderTestCase):
    def create_recorder(self) -> FastPostgresAggregateRecorder:
        recorder = FastPostgresAggregateRecorder(self.datastore, events_table_name="snapshots")
        recorder.create_table()
        return recorder


class TestFastApplicationRecorder(
    PostgresSchemaCase,
    es_cases.ApplicationRecorderTestCase[FastPostgresApplicationRecorder],
):
    def create_recorder(self) -> FastPostgresApplicationRecorder:
        return self.new_app_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()

    def test_large_batch_returns_ids_in_event_order(self) -> None:
        recorder = self.create_recorder()
        recorder.insert_events(self.stored_events(3))
        stored = self.stored_events(5000)
        ids = recorder.insert_events(stored)
        assert ids is not None
        assert list(ids) == list(range(4, 5004))
        # The i-th returned ID is the i-th event: RETURNING order is insertion order.
        notifications = recorder.select_notifications(start=ids[0], limit=len(ids))
        assert [n.id for n in notifications] == list(ids)
        for stored_event, notification in zip(stored, notifications, strict=True):
            assert notification.originator_id == stored_event.originator_id
            assert notification.originator_version == stored_event.originator_version
            assert notification.topic == stored_event.topic
            assert notification.state == stored_event.state

    def test_version_conflict_in_batch_rolls_back_whole_batch(self) -> None:
        recorder = self.create_recorder()
        first = self.stored_events(1000)
        recorder.insert_events(first)
        fresh = self.stored_events(999)
        with pytest.raises(IntegrityError):
            recorder.insert_events([*fresh, first[500]])
        assert recorder.max_notification_id() == 1000
        assert recorder.select_events(fresh[0].originator_id) == []
        # A duplicate inside one batch is a conflict too.
        dup = self.stored_events(1)
        with pytest.raises(IntegrityError):
            recorder.insert_events([dup[0], dup[0]])
        assert recorder.max_notification_id() == 1000

    def test_select_events_of_reads_many_originators_at_once(self) -> None:
        recorder = self.create_recorder()
        assert isinstance(recorder, BulkEventReader)
        stored = self.stored_events(60, per_originator=6)
        recorder.insert_events(stored)
        originators = list(dict.fromkeys(e.originator_id for e in stored))
        wanted = [originators[7], originators[2], self.new_originator_id(), originators[5]]
        selected = recorder.select_events_of(wanted)
        # The events of each one, as select_events reads them, ordered by originator.
        expected = [
            event
            for originator in sorted(wanted[:2] + wanted[3:], key=str)
            for event in recorder.select_events(originator)
        ]
        assert [(str(e.originator_id), e.originator_version) for e in selected] == [
            (str(e.originator_id), e.originator_version) for e in expected
        ]
        assert [(e.topic, e.state) for e in selected] == [(e.topic, e.state) for e in expected]
        assert len(selected) == 3 * 6
        assert recorder.select_events_of([]) == []
        assert recorder.select_events_of([self.new_originator_id()]) == []

    def test_originator_ids_given_as_strings(self) -> None:
        recorder = self.create_recorder()
        originator_id = uuid4()
        ids = recorder.insert_events(
            [
                StoredEvent(str(originator_id), 1, TOPIC, b"{}"),
                StoredEvent(originator_id, 2, TOPIC, b"{}"),
            ]
        )
        assert ids == [1, 2]
        selected = recorder.select_events(originator_id)
        assert [e.originator_version for e in selected] == [1, 2]
        with pytest.raises(DataError):
            recorder.insert_events([StoredEvent("not-a-uuid", 1, TOPIC, b"{}")])

    def test_insert_waits_for_exclusive_table_lock(self) -> None:
        """The fast path still takes ``LOCK TABLE ... IN EXCLUSIVE MODE``.

        A ROW EXCLUSIVE lock (what a plain INSERT takes) is held elsewhere: a plain INSERT
        would not wait for it, an EXCLUSIVE table lock must.
        """
        recorder = self.create_recorder()
        table = f"{self.schema}.{recorder.events_table_name}"
        errors: list[BaseException] = []

        def insert() -> None:
            try:
                recorder.insert_events(self.stored_events(10))
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        with psycopg.connect(self.url) as blocker:  # not autocommit: holds its lock
            blocker.execute(
                SQL("LOCK TABLE {}.{} IN ROW EXCLUSIVE MODE").format(
                    Identifier(self.schema), Identifier(recorder.events_table_name)
                )
            )
            writer = Thread(target=insert)
            writer.start()
            waiting_modes: list[str] = []
            deadline = time.monotonic() + 10
            while not waiting_modes and time.monotonic() < deadline:
                time.sleep(0.02)
                rows = blocker.execute(
                    "SELECT mode FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                    (table,),
                ).fetchall()
                waiting_modes = [row[0] for row in rows]
            assert writer.is_alive()
            blocker.rollback()
        writer.join(10)
        assert not writer.is_alive()
        if errors:
            raise errors[0]
        assert waiting_modes == ["ExclusiveLock"]
        assert recorder.max_notification_id() == 10

    def test_refuses_db_functions(self) -> None:
        datastore = PostgresDatastore(
            self.params["dbname"],
            self.params["host"],
            self.params["port"],
            self.params["user"],
            self.params["password"],
            schema=self.schema,
            enable_db_functions=True,
        )
        try:
            with pytest.raises(ValueError, match="POSTGRES_ENABLE_DB_FUNCTIONS"):
                FastPostgresApplicationRecorder(datastore)
        finally:
            datastore.close()


class TestFastApplicationRecorderWithTextOriginatorIDs(TestFastApplicationRecorder):
    originator_id_type = "text"

    def new_originator_id(self) -> str:
        return str(uuid4())

    def test_originator_ids_given_as_strings(self) -> None:
        recorder = self.create_recorder()
        ids = recorder.insert_events(
            [StoredEvent("pool:uniswap-v3", 1, TOPIC, b"{}"), StoredEvent(uuid4(), 1, TOPIC, b"")]
        )
        assert ids == [1, 2]
        assert len(recorder.select_events("pool:uniswap-v3")) == 1


class TestFastTrackingRecorder(PostgresSchemaCase, es_cases.TrackingRecorderTestCase):
    def create_recorder(self) -> FastPostgresProcessRecorder:
        recorder = FastPostgresProcessRecorder(
            self.datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        return recorder


class TestFastProcessRecorder(PostgresSchemaCase, es_cases.ProcessRecorderTestCase):
    def create_recorder(self) -> FastPostgresProcessRecorder:
        recorder = FastPostgresProcessRecorder(
            self.datastore, events_table_name="events", tracking_table_name="tracking"
        )
        recorder.create_table()
        return recorder


class TestFastNonInterleavingNotificationIDs(
    PostgresSchemaCase, es_cases.NonInterleavingNotificationIDsBaseCase
):
    insert_num = 5000  # large batches: the case this recorder is for

    def create_recorder(self) -> FastPostgresApplicationRecorder:
        return self.new_app_recorder()


# -- selection through PERSISTENCE_MODULE and use from an Application ---------------------


class Pool(Aggregate):
    def __init__(self, slug: str) -> None:
        self.slug = slug
        self.readings = 0
        self.last_value = 0

    @event("MetricRecorded")
    def record_metric(self, value: int) -> None:
        self.readings += 1
        self.last_value = value


class IngestApp(Application[UUID]):
    pass


class TestFastFactoryWithApplication(PostgresSchemaCase):
    def test_persistence_module_selects_fast_factory(self) -> None:
        factory = InfrastructureFactory[Any].construct(self.app_env())
        try:
            assert type(factory) is FastPostgresFactory
            recorder = factory.application_recorder()
            assert isinstance(recorder, FastPostgresApplicationRecorder)
            assert isinstance(factory.process_recorder(), FastPostgresProcessRecorder)
            assert isinstance(factory.aggregate_recorder(), FastPostgresAggregateRecorder)
        finally:
            factory.close()

    def test_application_saves_and_reloads(self) -> None:
        app = IngestApp(env=self.app_env())
        self.addCleanup(app.close)
        assert isinstance(app.recorder, FastPostgresApplicationRecorder)

        # 100 aggregates x 50 events = 5,000 events in one save().
        pools = [Pool(f"pool-{i}") for i in range(100)]
        for pool in pools:
            for value in range(49):
                pool.record_metric(value)
        recordings = app.save(*pools)

        ids = [r.notification.id for r in recordings]
        assert len(ids) == 5000
        assert ids == list(range(ids[0], ids[0] + 5000))  # contiguous, increasing
        # Each recording's notification is its own event (IDs were matched in order).
        notified = [
            (r.notification.originator_id, r.notification.originator_version) for r in recordings
        ]
        saved = [
            (r.domain_event.originator_id, r.domain_event.originator_version) for r in recordings
        ]
        assert notified == saved
        stored = app.recorder.select_notifications(start=ids[0], limit=len(ids))
        assert [(n.id, n.originator_id, n.originator_version) for n in stored] == [
            (r.notification.id, r.domain_event.originator_id, r.domain_event.originator_version)
            for r in recordings
        ]

        # Reload through a second application instance (no shared aggregate cache).
        reader = IngestApp(env=self.app_env())
        self.addCleanup(reader.close)
        reloaded = reader.repository.get(pools[42].id)
        assert isinstance(reloaded, Pool)
        assert reloaded.slug == "pool-42"
        assert reloaded.readings == 49
        assert reloaded.last_value == 48
        assert reloaded.version == 50

        # Optimistic concurrency: a stale copy cannot be saved over a newer version.
        stale = reader.repository.get(pools[0].id)
        assert isinstance(stale, Pool)
        pools[0].record_metric(1)
        app.save(pools[0])
        stale.record_metric(2)
        with pytest.raises(IntegrityError):
            reader.save(stale)

        # Later saves get later IDs. (A failed insert may still consume sequence values,
        # exactly as with the stock recorder: IDs increase but may have gaps.)
        pools[1].record_metric(7)
        (recording,) = app.save(pools[1])
        assert recording.notification.id > ids[-1] + 1


def test_binary_columns_are_what_psycopg_sends_for_the_lists() -> None:
    """The fast recorder builds its four binary arrays itself (one join per column); they
    are byte for byte what psycopg's list dumper makes of the same lists."""
    stored = [
        StoredEvent(uuid4(), version, topic, state)
        for version, topic, state in [
            (1, TOPIC, b'{"v":1}'),
            (2**40, "a:B", b""),
            (7, "\u00e9:\u6f22", bytes(range(256))),
            (3, TOPIC, b"x" * 70_000),
        ]
    ]
    columns = _binary_columns(stored)
    assert columns is not None
    transformer = Transformer()
    lists = _column_arrays(stored, "uuid")
    for ours, values in zip(columns, lists, strict=True):
        dumper = transformer.get_dumper(values, PyFormat.BINARY)
        assert (bytes(ours), type(ours).array_oid) == (bytes(dumper.dump(values)), dumper.oid)
    text_ids = [StoredEvent(str(e.originator_id), 1, TOPIC, b"{}") for e in stored]
    assert _binary_columns(text_ids) is None  # psycopg's text[] and the server's cast


class TestIngestOnPostgres(PostgresSchemaCase):
    """``DefiRealtime.ingest`` on the fast recorder: a group's uncached protocols are loaded
    with one ``select_events_of``, never one ``select_events`` each."""

    def ingest(self, app: DefiRealtime, observations: list[dict[str, Any]]) -> IngestResult:
        [result] = app.ingest([build_batch(observations, partial=True)])
        return result

    def test_a_group_loads_its_protocols_in_one_query(self) -> None:
        env = self.app_env()
        writer = DefiRealtime(env=env)
        self.addCleanup(writer.close)
        listed = [
            {"protocol": f"p{i}", "value": float(i), "observed_at": T0, "name": f"P {i}"}
            for i in range(40)
        ]
        assert self.ingest(writer, listed).accepted == 40

        # A second node (cold cache): 40 known protocols, 10 new ones, one unknown.
        app = DefiRealtime(env=env)
        self.addCleanup(app.close)
        calls: dict[str, int] = {"select_events": 0, "select_events_of": 0}
        for name in calls:
            original = getattr(app.recorder, name)

            def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
                calls[_name] += 1
                return _original(*args)

            setattr(app.recorder, name, counted)
        later = [
            {"protocol": f"p{i}", "value": float(i) + 1, "observed_at": T0 + 60} for i in range(40)
        ]
        later += [
            {"protocol": f"n{i}", "value": 1.0, "observed_at": T0, "name": f"N {i}"}
            for i in range(10)
        ]
        later += [{"protocol": "p3", "value": 3.0, "observed_at": T0}]  # a duplicate
        later += [{"protocol": "ghost", "value": 1.0, "observed_at": T0}]
        result = self.ingest(app, later)

        assert calls == {"select_events": 0, "select_events_of": 1}
        assert (result.accepted, result.duplicates) == (50, 1)
        assert [r.field for r in result.rejected] == ["protocol"]
        assert result.position == app.recorder.max_notification_id() == 40 * 2 + 40 + 20
        reader = DefiRealtime(env=env)
        self.addCleanup(reader.close)
        protocol = reader.get_protocol("p7")
        assert (protocol.version, protocol.current_value()) == (3, 8.0)
        assert reader.get_protocol("n9").name == "N 9"


@pytest.mark.parametrize(
    "recorder_class", [FastPostgresApplicationRecorder, FastPostgresProcessRecorder]
)
def test_recorders_created_at_once_on_a_fresh_schema_all_start(
    recorder_class: type[FastPostgresApplicationRecorder],
) -> None:
    """Nodes and workers starting together on a fresh database each create the tables.

    Without the retry, most of 8 threads released by a barrier failed: UniqueViolation on
    pg_type/pg_class, "relation already exists" on the composite type, "tuple concurrently
    updated". Every one must start, and the store must then work.
    """
    url = postgres_url()
    params = _connection_params(url)
    for _ in range(3):
        schema = f"es_race_{uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
        datastores: list[PostgresDatastore] = []
        barrier = Barrier(8)
        errors: list[BaseException] = []

        def start(
            datastore: PostgresDatastore, barrier: Barrier, errors: list[BaseException]
        ) -> None:
            try:
                recorder = recorder_class(datastore, events_table_name="events")
                barrier.wait()
                recorder.create_table()
            except BaseException as error:  # collected, asserted below
                errors.append(error)

        try:
            for _ in range(8):
                datastores.append(
                    PostgresDatastore(
                        params["dbname"],
                        params["host"],
                        params["port"],
                        params["user"],
                        params["password"],
                        pool_size=2,
                        max_overflow=0,
                        schema=schema,
                    )
                )
            threads = [Thread(target=start, args=(ds, barrier, errors)) for ds in datastores]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert errors == []
            recorder = recorder_class(datastores[0], events_table_name="events")
            stored = StoredEvent(uuid4(), 1, TOPIC, b"{}")
            assert recorder.insert_events([stored]) == [1]
        finally:
            for datastore in datastores:
                datastore.close()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
