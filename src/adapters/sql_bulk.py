"""Many rows into one table in one statement: the history projection's writes (ADR 0055).

On PostgreSQL an ``executemany`` through psycopg is one statement per row (pipelined, but
parsed, planned and executed row by row, each ``ON CONFLICT`` probe on its own): a live
batch of 50 observations moves ~800 group-day rows, and those statements were most of the
history projection's time. ``BulkWriter`` sends every column as one typed array instead,
``INSERT ... SELECT * FROM unnest(...)`` (one round trip, one plan whatever the row count,
and a statement text that does not grow, so psycopg prepares it once). Arrays carry what
JSON cannot (``inf``, the open end of a series state) and go in binary: no float
formatting, no quoting of every text element (ADR 0056).

SQLite, in process, has no round trip to save: there the same write is SQLAlchemy's
``executemany`` of the equivalent ``INSERT ... ON CONFLICT``.

An upsert's rows must have distinct conflict keys (one statement cannot update a row
twice); the callers' rows come from dicts keyed by them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import BigInteger, Double, Integer, Table, Text, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.type_api import TypeEngine

__all__ = ["BulkWriter"]

# PostgreSQL array type and the Python conversion of each column type the tables use.
_TYPES: Final[tuple[tuple[type[TypeEngine[Any]], str, Callable[[Any], Any]], ...]] = (
    (BigInteger, "int8", int),  # before Integer: BigInteger is one
    (Integer, "int4", int),
    (Double, "float8", float),
    (Text, "text", str),
)


def _column_type(column_type: TypeEngine[Any]) -> tuple[str, Callable[[Any], Any]]:
    for kind, name, convert in _TYPES:
        if isinstance(column_type, kind):
            return name, convert
    raise TypeError(f"no array type for {column_type!r}")


class BulkWriter:
    """``INSERT`` (optionally ``ON CONFLICT (key) DO UPDATE``) of many rows of one table.

    ``update`` maps a column to its new value on conflict, in SQL over ``excluded`` and the
    table's name (the same text on both dialects), e.g. ``{"total": "group_days.total +
    excluded.total"}``; ``key`` is the conflict target. Neither: a plain insert.
    """

    def __init__(
        self,
        dialect: str,
        table: Table,
        *,
        key: Sequence[str] = (),
        update: Mapping[str, str] | None = None,
    ) -> None:
        self._table = table
        self._postgres = dialect == "postgresql"
        names = [column.name for column in table.columns]
        self._columns = [(name, *_column_type(table.c[name].type)) for name in names]
        conflict = ""
        if update:
            sets = ", ".join(f"{name} = {value}" for name, value in update.items())
            conflict = f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        if self._postgres:
            # ``%(name)b``: psycopg sends each array in binary (no text formatting and
            # quoting of every element); the driver's own placeholders, so the statement
            # goes through ``exec_driver_sql`` as it is.
            arrays = ", ".join(f"CAST(%({name})b AS {kind}[])" for name, kind, _ in self._columns)
            self._driver_statement = (
                f"INSERT INTO {table.name} ({', '.join(names)}) "
                f"SELECT * FROM unnest({arrays}){conflict}"
            )
        elif update:
            self._statement: Any = sqlite.insert(table).on_conflict_do_update(
                index_elements=list(key),
                set_={name: text(value) for name, value in update.items()},
            )
        else:
            self._statement = table.insert()

    def write(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` (each a value per column) in one statement (PostgreSQL)."""
        if not rows:
            return
        if not self._postgres:
            connection.execute(self._statement, list(rows))
            return
        arrays = {
            name: [None if row[name] is None else convert(row[name]) for row in rows]
            for name, _, convert in self._columns
        }
        connection.exec_driver_sql(self._driver_statement, arrays)
