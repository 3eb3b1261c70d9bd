"""Alembic environment of the history read model's schema.

Alembic loads this file by path (``migrations/`` is a plain directory, not a package).
Upgrades only run through ``defi_realtime.adapters.sql_schema.migrate``, which opens the
transaction, takes the migration lock and hands the connection over in
``config.attributes["connection"]``: running without it would skip that lock, so it is
refused.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection


def _run_migrations() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (SQL script) migrations are not supported")
    config = context.config
    connection = config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("run migrations with defi_realtime.adapters.sql_schema.migrate(url)")
    context.configure(
        connection=connection,
        version_table=config.get_main_option("version_table") or "history_alembic_version",
    )
    # The caller's transaction is already open (it holds the lock), so Alembic joins it
    # instead of committing on its own: the whole upgrade commits or rolls back as one.
    with context.begin_transaction():
        context.run_migrations()


_run_migrations()
