"""Faster PostgreSQL recorders for eventsourcing, selected by one environment variable.

Select with ``PERSISTENCE_MODULE=defi_realtime.adapters.postgres_event_store`` plus the usual
``POSTGRES_*`` variables of :mod:`eventsourcing.postgres` (``POSTGRES_DBNAME``,
``POSTGRES_HOST``, ``POSTGRES_PORT``, ``POSTGRES_USER``, ``POSTGRES_PASSWORD``,
``POSTGRES_SCHEMA``, ...). The tables, indexes and semantics are exactly those of the stock
recorders, so stock and fast recorders can read and write the same database.

What changes, and why
---------------------
The stock recorders send a batch as ONE parameter: an array of a composite type
(``unnest(%s::stored_event_uuid[])``). psycopg has no C dumper for composites, so every
event goes through a pure-Python text dumper that regex-escapes each field (the state as
bytea hex); profiling a 5,000-event ``insert_events`` put ~2/3 of its time there.

Here a batch is sent as FOUR column arrays in binary format
(``unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])``): elements are written as
raw bytes (no escaping, no hex) mostly by psycopg's C dumpers, and the server reads binary
arrays without parsing text. bench/bench_postgres_ingest.py measures 3-4x the stock
recorder's events/s at 5,000 events per save; it is still ONE
``INSERT ... SELECT ... RETURNING notification_id`` statement.

What is deliberately NOT changed
--------------------------------
* Locking and ordering: :meth:`PostgresApplicationRecorder._insert_stored_events` still
  runs first (``SET LOCAL lock_timeout``; ``LOCK TABLE ... IN EXCLUSIVE MODE``; ``NOTIFY``)
  and only then delegates the row insert to us (see the MRO note on
  :class:`FastPostgresApplicationRecorder`), so notification IDs of concurrent
  transactions never interleave and commit order equals ID order.
* Transactions: the stock pipelined ``insert_events`` (one round trip for tracking + lock +
  notify + insert) is reused; a duplicate ``(originator_id, originator_version)`` still
  fails the whole transaction (events and tracking record) with
  :class:`eventsourcing.persistence.IntegrityError`.
* Returned IDs: one ``INSERT ... SELECT FROM unnest(...)`` draws ``nextval`` in input row
  order and ``RETURNING`` yields rows in that order, as with the stock statement.

COPY into a staging table was measured as well: no faster than binary ``unnest`` for large
batches, much slower for small ones (an extra statement and round trips, and COPY cannot
run in pipeline mode), so it is not used.

``POSTGRES_ENABLE_DB_FUNCTIONS`` is refused: that stock path bypasses this code and is
known to drop tracking records and interleave notification IDs.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast
from uuid import UUID

import psycopg

# Import the module, never its classes by name: ``InfrastructureFactory.construct`` resolves
# ``PERSISTENCE_MODULE`` by scanning this module's namespace for concrete
# InfrastructureFactory subclasses and requires exactly one. A module-level name
# ``PostgresFactory`` would be a second match and make the module unselectable.
from eventsourcing import postgres as es_postgres
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.utils import Environment
from eventsourcing.utils import retry as es_retry
from psycopg import errors as pg_errors
from psycopg.abc import AdaptContext
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Composed, Identifier
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg import Cursor
    from psycopg.rows import DictRow

__all__ = [
    "Factory",
    "FastPostgresAggregateRecorder",
    "FastPostgresApplicationRecorder",
    "FastPostgresFactory",
    "FastPostgresProcessRecorder",
]

# Several processes starting on a fresh database (API nodes, workers) create the tables at
# once. ``CREATE TABLE IF NOT EXISTS`` is not atomic in PostgreSQL: a loser of the race fails
# on the catalogue's unique index (``pg_type_typname_nsp_index``, ``pg_class_relname_nsp_
# index``), on the composite type created alongside ("relation ... already exists"), or on
# "tuple concurrently updated" (eventsourcing wraps each in its own error class). Once the
# winner has committed, the same statements are no-ops, so trying again is the whole fix.
# DDL is transactional here: a failed attempt leaves nothing half-made behind.


def _lost_creation_race(error: BaseException) -> bool:
    """Whether ``error`` is another process creating the same tables at the same moment.

    Measured kinds: any IntegrityError (catalogue unique indexes; the tracking recorder's
    "__migration__" row, inserted by whichever process created the tracking table: a retry
    reads it back and inserts nothing), "relation ... already exists" on the composite type,
    and "tuple concurrently updated". Table creation writes no user data, so a retry of
    anything else fails the same way and is re-raised after the last attempt.
    """
    if isinstance(error, IntegrityError):
        return True
    cause = error.__cause__
    return isinstance(cause, pg_errors.DuplicateTable | pg_errors.DuplicateObject) or (
        isinstance(cause, pg_errors.InternalError_) and "tuple concurrently updated" in str(cause)
    )


_retry_table_creation = retry(
    retry=retry_if_exception(_lost_creation_race),
    stop=stop_after_attempt(5),
    wait=wait_random(0.01, 0.2),
    reraise=True,
)

# Originator IDs: all UUID or all str at runtime (see below); typed loosely for mypy.
ColumnArrays = tuple[list[UUID | str], list[int], list[str], list[bytes]]

# PostgreSQL's binary array format: number of dimensions, has-nulls flag, element type OID,
# then each dimension's length and lower bound, then each element as a length and its bytes.
# Seconds a pooled connection above the pool's size stays open unused.
OVERFLOW_IDLE: Final = 60.0
_ARRAY_HEADER: Final = struct.Struct(">iiIii")
_LENGTH: Final = struct.Struct(">i")
_INT8_ELEMENT: Final = struct.Struct(">iq")
_UUID_LENGTH: Final = _LENGTH.pack(16)
_UUID_OID, _INT8_OID, _TEXT_OID, _BYTEA_OID = 2950, 20, 25, 17


class _BinaryArray(bytes):
    """A one-dimensional array already in PostgreSQL's binary format, ``array_oid`` saying
    of what; ``_BinaryArrayDumper`` hands it to psycopg as it is."""

    __slots__ = ()
    array_oid: ClassVar[int] = 0


class _UUIDArray(_BinaryArray):
    array_oid = 2951


class _Int8Array(_BinaryArray):
    array_oid = 1016


class _TextArray(_BinaryArray):
    array_oid = 1009


class _ByteaArray(_BinaryArray):
    array_oid = 1001


class _BinaryArrayDumper(Dumper):
    format = Format.BINARY

    def __init__(self, cls: type, context: AdaptContext | None = None) -> None:
        super().__init__(cls, context)
        self.oid = getattr(cls, "array_oid", 0)

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def _binary_columns(stored_events: Sequence[StoredEvent]) -> tuple[_BinaryArray, ...] | None:
    """The four columns as binary arrays, or None when an originator ID is not a UUID.

    What psycopg's list dumper sends for ``uuid[]``, ``bigint[]``, ``text[]`` and
    ``bytea[]`` (tests/integration/test_postgres_event_store.py compares the bytes), built
    with one ``join`` per column instead of a Python call per element (~3 us per event).
    """
    ids = []
    for stored in stored_events:
        originator_id = stored.originator_id
        if not isinstance(originator_id, UUID):
            return None  # text IDs: psycopg's list dumper, and the server's cast
        ids.append(originator_id.bytes)
    count = len(stored_events)

    def header(element_oid: int) -> bytes:
        return _ARRAY_HEADER.pack(1, 0, element_oid, count, 1)

    element = _INT8_ELEMENT.pack
    versions = b"".join([element(8, e.originator_version) for e in stored_events])
    encoded: dict[str, bytes] = {}  # a few topics, each encoded once
    topics = []
    for stored in stored_events:
        topic = encoded.get(stored.topic)
        if topic is None:
            raw = stored.topic.encode()
            topic = encoded[stored.topic] = _LENGTH.pack(len(raw)) + raw
        topics.append(topic)
    length = _LENGTH.pack
    return (
        _UUIDArray(header(_UUID_OID) + _UUID_LENGTH + _UUID_LENGTH.join(ids)),
        _Int8Array(header(_INT8_OID) + versions),
        _TextArray(header(_TEXT_OID) + b"".join(topics)),
        _ByteaArray(
            header(_BYTEA_OID) + b"".join([length(len(e.state)) + e.state for e in stored_events])
        ),
    )


def _column_arrays(stored_events: Sequence[StoredEvent], originator_id_type: str) -> ColumnArrays:
    """Split stored events into the four parallel column arrays ``unnest`` expects."""
    originator_ids: list[UUID | str] = [e.originator_id for e in stored_events]
    # psycopg picks ONE element dumper for a whole list, so a list must be homogeneous.
    # UUID objects go out as binary uuid[]; anything else (text IDs, or UUIDs given as
    # strings) goes out as text[] and the ``::uuid[]`` cast lets the server parse them,
    # so a malformed ID still fails as a DataError from the database like in the stock path.
    if originator_id_type != "uuid" or not all(isinstance(i, UUID) for i in originator_ids):
        originator_ids = [str(i) for i in originator_ids]
    return (
        originator_ids,
        [e.originator_version for e in stored_events],
        [e.topic for e in stored_events],
        [e.state for e in stored_events],
    )


class FastPostgresAggregateRecorder(es_postgres.PostgresAggregateRecorder):
    """Aggregate recorder (e.g. snapshots) that inserts column arrays instead of composites."""

    def __init__(
        self,
        datastore: es_postgres.PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        # Replace (not add) the stock statement: PostgresApplicationRecorder.__init__ runs
        # after this in the MRO of the subclasses below and appends " RETURNING
        # notification_id" to whatever ``insert_events_statement`` is at that point.
        # ``%b`` asks psycopg for binary parameters (see module docstring for why).
        # The originator_id type is validated by PostgresDatastore ("uuid" or "text").
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t ("
            "originator_id, originator_version, topic, state) "
            "SELECT originator_id, originator_version, topic, state "
            "FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[]) "
            "AS e(originator_id, originator_version, topic, state)"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=SQL(self.datastore.originator_id_type),
        )

        self.select_events_of_statement = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = ANY(%b::{id_type}[]) "
            "ORDER BY originator_id, originator_version"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=SQL(self.datastore.originator_id_type),
        )
        # After a snapshot: each aggregate's events from its own version on (the primary
        # key's index, one range scan per aggregate).
        self.select_events_after_statement = SQL(
            "SELECT t.originator_id, t.originator_version, t.topic, t.state "
            "FROM unnest(%b::{id_type}[], %b::bigint[]) AS w(originator_id, after) "
            "JOIN {schema}.{table} AS t ON t.originator_id = w.originator_id "
            "AND t.originator_version > w.after "
            "ORDER BY t.originator_id, t.originator_version"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=SQL(self.datastore.originator_id_type),
        )
        # Each aggregate's newest row (its latest snapshot, in a snapshots table): one
        # backward index lookup per aggregate.
        self.select_last_of_statement = SQL(
            "SELECT l.originator_id, l.originator_version, l.topic, l.state "
            "FROM unnest(%b::{id_type}[]) AS w(originator_id) "
            "CROSS JOIN LATERAL (SELECT * FROM {schema}.{table} AS t "
            "WHERE t.originator_id = w.originator_id "
            "ORDER BY t.originator_version DESC LIMIT 1) AS l"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            id_type=SQL(self.datastore.originator_id_type),
        )

    @_retry_table_creation
    def create_table(self) -> None:
        super().create_table()

    def _ids(self, originator_ids: Sequence[UUID | str]) -> list[UUID | str]:
        ids: list[UUID | str] = list(originator_ids)
        if self.datastore.originator_id_type != "uuid" or not all(isinstance(i, UUID) for i in ids):
            ids = [str(i) for i in ids]
        return ids

    def _select(self, statement: Composed, params: tuple[Any, ...]) -> list[StoredEvent]:
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(statement, params, prepare=True)
            return [
                StoredEvent(
                    originator_id=row["originator_id"],
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=bytes(row["state"]),
                )
                for row in curs.fetchall()
            ]

    @es_retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events_after(
        self, originator_ids: Sequence[UUID | str], versions: Sequence[int]
    ) -> list[StoredEvent]:
        """The stored events of each aggregate after its version in ``versions`` (the same
        order), ordered by originator then version: one query for a group's aggregates
        loaded from snapshots. Implements ``BulkEventReader``."""
        if not originator_ids:
            return []
        return self._select(
            self.select_events_after_statement, (self._ids(originator_ids), list(versions))
        )

    @es_retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_last_of(self, originator_ids: Sequence[UUID | str]) -> list[StoredEvent]:
        """The newest stored row of each aggregate that has one (of a snapshots table: its
        latest snapshot), in one query. Implements ``BulkEventReader``."""
        if not originator_ids:
            return []
        return self._select(self.select_last_of_statement, (self._ids(originator_ids),))

    # The same retry as the stock select_events: a dropped connection is tried again.
    @es_retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def select_events_of(self, originator_ids: Sequence[UUID | str]) -> list[StoredEvent]:
        """Every stored event of the given aggregates, ordered by originator then version.

        One query (the primary key's index, ``= ANY``) where loading them one by one took a
        round trip each: importing the real snapshot file looked up 6,689 new protocols with
        6,689 ``select_events`` (docs/benchmarks.md). Implements ``BulkEventReader``.
        """
        if not originator_ids:
            return []
        return self._select(self.select_events_of_statement, (self._ids(originator_ids),))

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> None:
        # Overrides only the row-encoding step of PostgresAggregateRecorder. Callers (the
        # stock insert_events, and PostgresApplicationRecorder._insert_stored_events which
        # takes the table lock first) and result handling are unchanged.
        statement: Composed = self.insert_events_statement
        columns: Sequence[Any] | None = None
        if self.datastore.originator_id_type == "uuid" and stored_events:
            columns = _binary_columns(stored_events)
        if columns is None:
            columns = _column_arrays(stored_events, self.datastore.originator_id_type)
        else:
            for array_class in (_UUIDArray, _Int8Array, _TextArray, _ByteaArray):
                curs.adapters.register_dumper(array_class, _BinaryArrayDumper)
        curs.execute(
            statement,
            columns,
            # Why prepare: the statement text never changes, so after the first call the
            # server skips parse/plan; it matters for the many small saves.
            prepare=True,
        )


class FastPostgresApplicationRecorder(
    es_postgres.PostgresApplicationRecorder, FastPostgresAggregateRecorder
):
    """Application recorder: stock locking/notify/pipelining, fast row encoding.

    MRO (why the base order matters): ``FastPostgresApplicationRecorder ->
    PostgresApplicationRecorder -> FastPostgresAggregateRecorder ->
    PostgresAggregateRecorder``. So the stock
    ``PostgresApplicationRecorder._insert_stored_events`` (lock table, NOTIFY) runs first,
    and its ``super()._insert_stored_events(...)`` lands on our column-array insert. The
    integration tests check both the EXCLUSIVE lock and the non-interleaving of IDs.
    """

    def __init__(
        self,
        datastore: es_postgres.PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
    ) -> None:
        if datastore.enable_db_functions:
            # Why refuse rather than fall back: the stock db-function path ignores the
            # tracking kwarg and skips the table lock, i.e. it silently drops tracking
            # records and allows interleaved notification IDs.
            msg = (
                "FastPostgresApplicationRecorder does not support "
                "POSTGRES_ENABLE_DB_FUNCTIONS; unset it"
            )
            raise ValueError(msg)
        super().__init__(datastore, events_table_name=events_table_name)

    def _fetch_ids_after_insert_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        **_: Any,
    ) -> Sequence[int] | None:
        # The stock version reads the RETURNING ids as dict rows: a dict per event to read
        # one column (~5 % of a 20,000-event save). Same checks, tuple rows.
        status = curs.statusmessage or ""
        assert status.startswith("INSERT"), status
        rows = cast("Cursor[tuple[Any, ...]]", curs)
        rows.row_factory = tuple_row
        try:
            return [row[0] for row in rows.fetchall()]
        except psycopg.ProgrammingError as error:
            msg = f"Couldn't get all notification IDs (expected {len(stored_events)})"
            raise ProgrammingError(msg) from error


class FastPostgresProcessRecorder(
    es_postgres.PostgresProcessRecorder, FastPostgresApplicationRecorder
):
    """Process recorder: tracking record + events in one transaction, fast row encoding.

    MRO: ``PostgresProcessRecorder -> PostgresTrackingRecorder ->
    FastPostgresApplicationRecorder -> PostgresApplicationRecorder ->
    FastPostgresAggregateRecorder -> ...``; the tracking insert (stock ``_insert_events``)
    happens inside the same pipelined transaction, before the lock and the events.
    """

    @_retry_table_creation
    def create_table(self) -> None:
        # The stock tracking recorder's create_table comes first in the MRO and creates the
        # tracking table after the events table: the retry must cover both.
        super().create_table()


class FastPostgresFactory(es_postgres.PostgresFactory):
    """Infrastructure factory found by ``PERSISTENCE_MODULE`` (the only one in this module).

    Standalone tracking recorders stay the stock ``PostgresTrackingRecorder``: they insert
    no events, so there is nothing to speed up.
    """

    aggregate_recorder_class = FastPostgresAggregateRecorder
    application_recorder_class = FastPostgresApplicationRecorder
    process_recorder_class = FastPostgresProcessRecorder

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        # psycopg_pool keeps a connection above the pool's size for ten minutes after a
        # burst; not opened yet, so the pool schedules its shrinking with this instead.
        self.datastore.pool.max_idle = OVERFLOW_IDLE


# Conventional alias (eventsourcing.postgres has ``Factory`` too). It is the same class
# object, so construct() still finds exactly one factory class here.
Factory = FastPostgresFactory
