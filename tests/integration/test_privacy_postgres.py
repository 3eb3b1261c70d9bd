"""Crypto-shredding on the production stores: PostgreSQL (event store, read models, key
store) and Redis (rate-limit counters). After an erase, neither the tables' rows nor their
files (read raw after a checkpoint: dead tuples and free space included) hold the account's
email, contact, webhook URLs, webhook secret or data key; Redis holds nothing under its keys;
the log replays with its fields redacted; another account is untouched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.asyncio import Redis
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from defi_realtime.adapters.limits_rate_limiter import RedisRateLimiter
from defi_realtime.adapters.redis_key_traces import RedisKeyTraces
from defi_realtime.application.personal_fields import REDACTED, subject_of
from defi_realtime.application.rate_limits import Quota
from tests.privacy_world import (
    World,
    found_in_relation_files,
    found_in_rows,
    merged,
)
from tests.services import missing, postgres_url, redis_url

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(240)]
SCRUB_RETRY = 90.0


def _superuser(url: str) -> bool:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                ).scalar_one()
            )
    finally:
        engine.dispose()


@contextmanager
def throwaway_database() -> Iterator[str]:
    """A SQLAlchemy URL of a new database, dropped on exit. Its own database, not a schema:
    PostgreSQL keeps a deleted row while any transaction of the same database could see
    it, and other tests' transactions in the shared one must not decide what is left."""
    base = make_url(postgres_url()).set(drivername="postgresql+psycopg")
    name = f"privacy_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def world() -> Iterator[World]:
    with throwaway_database() as url:
        if not _superuser(url):
            missing("reading PostgreSQL's relation files needs a superuser")
        parsed = make_url(url)
        env = {
            "PERSISTENCE_MODULE": "defi_realtime.adapters.postgres_event_store",
            "POSTGRES_DBNAME": parsed.database or "postgres",
            "POSTGRES_HOST": parsed.host or "127.0.0.1",
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": parsed.username or "postgres",
            "POSTGRES_PASSWORD": parsed.password or "",
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "0",
        }
        built = World(env, url)
        try:
            yield built
        finally:
            built.close()


async def _redis_round(
    prefix: str, key_ids: list[str], erase: list[str]
) -> tuple[int, list[bytes]]:
    client = Redis.from_url(redis_url())
    try:
        limiter = RedisRateLimiter(client, prefix)
        for key_id in key_ids:
            await limiter.hit(Quota("http:free", 60), f"http:key:{key_id}")
            await limiter.hit(Quota("ws:free", 60), f"ws:key:{key_id}")
        purged = await RedisKeyTraces(client, prefix).purge(erase)
        left = [name async for name in client.scan_iter(match=f"{prefix}*")]
        await client.delete(*left) if left else None
        return purged, left
    finally:
        await client.aclose()


def test_after_erase_no_table_file_or_redis_entry_holds_the_account(world: World) -> None:
    alice, bob = world.customer("alice"), world.customer("bob")
    data_key = world.keys.key_for(subject_of(alice.owner))
    assert data_key is not None
    needles = {**alice.personal, "data key": data_key.secret}
    before = merged(
        found_in_rows(world.history_url, needles),
        found_in_relation_files(world.history_url, needles),
    )
    # The searches find what is there (the read models hold the channels, the key store
    # the key), and the event store holds none of it in clear.
    assert {"webhook URL", "email", "data key"} <= set(before)
    assert not any("events" in table for tables in before.values() for table in tables)

    erasure = world.privacy.erase(alice.account_id)
    assert erasure.key_destroyed
    # A transaction older than the erase, anywhere on the server, keeps the deleted rows
    # in the files (erase reports scrubbed=False); erasing again after it ends finishes.
    deadline = time.monotonic() + SCRUB_RETRY
    while not erasure.scrubbed and time.monotonic() < deadline:
        erasure = world.privacy.erase(alice.account_id)
    assert erasure.scrubbed, "an older transaction on the server outlived the retries"
    world.sync()

    after = merged(
        found_in_rows(world.history_url, needles),
        found_in_relation_files(world.history_url, needles),
    )
    assert after == {}
    bob_found = found_in_relation_files(world.history_url, bob.personal)
    assert "webhook URL" in bob_found, "the other account's data is untouched"

    # Redis: the erased keys' counters go, the other account's stay.
    [alice_key] = erasure.key_ids
    [bob_key] = [str(key.id) for key in world.app.api_keys(bob.account_id)]
    prefix = f"test-privacy-{uuid.uuid4().hex[:8]}:"
    purged, left = asyncio.run(_redis_round(prefix, [alice_key, bob_key], [alice_key]))
    assert purged == 2
    assert left
    assert not any(alice_key.encode() in name for name in left)
    assert all(bob_key.encode() in name for name in left)

    reopened = world.reopened()
    try:
        account = reopened.get_account(alice.account_id)
        assert (account.contact, account.erased) == (REDACTED, True)
        assert reopened.get_account(bob.account_id).contact == bob.contact
        assert reopened.authenticate(alice.key) is None
        assert reopened.authenticate(bob.key) is not None
    finally:
        reopened.close()
