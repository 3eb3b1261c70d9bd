"""A deployment's stores with customers in them, for the crypto-shredding tests
(tests/unit/test_privacy.py on SQLite files, tests/integration/test_privacy_postgres.py on
PostgreSQL + Redis), and the raw searches of those stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.sql_account_keys import SqlAccountKeys
from defi_realtime.adapters.sql_delivery_log import SqlDeliveryLog
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.delivery import DeliveryAttempt, NotificationJob
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.privacy import AccountPrivacy

T0 = 1_700_000_000.0
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1e9}


@dataclass(frozen=True)
class Customer:
    """An account with a key, a rule (webhook + email, changed once), a subscription, a
    delivery attempt and a journaled job: every place its personal data goes."""

    account_id: uuid.UUID
    owner: str
    key: str
    email: str
    contact: str
    url: str
    first_url: str
    secret: str
    rule_id: uuid.UUID
    subscription_id: uuid.UUID

    @property
    def personal(self) -> dict[str, bytes]:
        """What must not be found in the raw stores once the account is erased."""
        return {
            "email": self.email.encode(),
            "contact": self.contact.encode(),
            "webhook URL": self.url.encode(),
            "first webhook URL": self.first_url.encode(),
            "webhook secret": self.secret.encode(),
        }


class World:
    """The application (sealing with the key store), the history read model, the delivery
    log and the key store, on one event store and one history database."""

    def __init__(self, env: Mapping[str, str], history_url: str) -> None:
        self.env = dict(env)
        self.history_url = history_url
        self.keys = SqlAccountKeys(history_url)
        self._reopened_keys: list[SqlAccountKeys] = []
        self.history = SqlHistoryReadModel(history_url)
        self.deliveries = SqlDeliveryLog(history_url)
        self.app = DefiRealtime(env=self.env, account_keys=self.keys)
        self.log = EventStoreLog(self.app)
        self.privacy = AccountPrivacy(
            self.app, self.keys, self.history, [self.history, self.deliveries], self.deliveries
        )
        [result] = self.app.ingest(
            [build_batch([{"protocol": "aave", "value": 2e9, "observed_at": T0, "name": "Aave"}])]
        )
        assert result.committed

    def sync(self) -> None:
        """The history follower catches up with the log."""
        self.history.apply(self.log.read(self.history.position(), 1_000_000))

    def customer(self, tag: str) -> Customer:
        unique = uuid.uuid4().hex[:12]
        email = f"{tag}-{unique}@mail.example.org"
        contact = f"{tag}-{unique}-contact@corp.example.org"
        first_url = f"https://hooks.example.org/{tag}-{unique}-first"
        url = f"https://hooks.example.org/{tag}-{unique}-now"
        secret = f"whsec-{tag}-{unique}"
        account_id = self.app.open_account(f"{tag} Ltd", contact)
        key = self.app.issue_api_key(f"{tag}-key", account_id=account_id)
        owner = self.app.get_account(account_id).owner
        rule_id = self.app.create_alert_rule(
            owner,
            {"protocol": "aave"},
            BELOW_1B,
            [
                {"kind": "webhook", "url": first_url, "secret": secret},
                {"kind": "email", "address": email},
            ],
            name=f"{tag} watch",
        )
        self.app.update_alert_rule(
            rule_id,
            owner,
            channels=[
                {"kind": "webhook", "url": url, "secret": secret},
                {"kind": "email", "address": email},
            ],
        )
        subscription_id = self.app.open_subscription(owner, "protocols", None, name=f"{tag}-feed")
        # Delivered by webhook: its URL and secret are the account's too.
        self.app.open_subscription(
            owner,
            "protocols",
            None,
            name=f"{tag}-hook",
            webhook={"url": f"{url}/feed", "secret": secret},
        )
        now = time.time()
        idempotency_key = f"{rule_id}:1:0"
        self.deliveries.record_pending(
            [
                NotificationJob(
                    idempotency_key=idempotency_key,
                    rule_id=str(rule_id),
                    owner=owner,
                    condition="firing",
                    measure=9e8,
                    observed_at=T0,
                    position=1,
                    channel_index=0,
                    channel={"kind": "webhook", "url": url, "secret": secret},
                    recorded_at=now,
                )
            ]
        )
        self.deliveries.record(
            DeliveryAttempt(
                rule_id=str(rule_id),
                owner=owner,
                idempotency_key=idempotency_key,
                channel_kind="webhook",
                channel_target=url,
                attempt=1,
                status="failed",
                started_at=now,
                finished_at=now,
                condition="firing",
                position=1,
                error=f"connection refused by {url}",
            )
        )
        self.sync()
        return Customer(
            account_id, owner, key, email, contact, url, first_url, secret, rule_id, subscription_id
        )

    def reopened(self) -> DefiRealtime:
        """A new application on the same stores (a restart): everything is replayed. Its
        key store is closed with the world (the application does not own it)."""
        keys = SqlAccountKeys(self.history_url)
        self._reopened_keys.append(keys)
        return DefiRealtime(env=self.env, account_keys=keys)

    def close(self) -> None:
        self.log.close()
        self.app.close()
        self.history.close()
        self.deliveries.close()
        self.keys.close()
        for keys in self._reopened_keys:
            keys.close()


def found_in_files(directory: Path, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """Which needles occur in which file under ``directory`` (every byte of every file:
    databases, WAL and shared-memory files)."""
    found: dict[str, list[str]] = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            for what, needle in needles.items():
                if needle in data:
                    found.setdefault(what, []).append(path.name)
    return found


def found_in_rows(url: str, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """Which needles occur in which table of the database's current schema (every row as
    text, byte columns decoded)."""
    engine = create_engine(url, poolclass=NullPool)
    found: dict[str, list[str]] = {}
    try:
        with engine.connect() as connection:
            tables = connection.execute(
                text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            ).scalars()
            for table in list(tables):
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
                blob = b"".join(_bytes(value) for row in rows for value in row)
                for what, needle in needles.items():
                    if needle in blob:
                        found.setdefault(what, []).append(table)
    finally:
        engine.dispose()
    return found


def found_in_relation_files(url: str, needles: Mapping[str, bytes]) -> dict[str, list[str]]:
    """Which needles occur in the files of the current schema's tables, indexes and TOAST
    tables, read raw after a checkpoint (dead tuples and free space included)."""
    engine = create_engine(url, poolclass=NullPool)
    found: dict[str, list[str]] = {}
    try:
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text("CHECKPOINT"))
            relations = connection.execute(
                text(
                    "SELECT c.oid::regclass::text, pg_relation_filepath(c.oid) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'i', 'm') "
                    "UNION ALL SELECT t.oid::regclass::text, pg_relation_filepath(t.oid) "
                    "FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "JOIN pg_class t ON t.oid = c.reltoastrelid "
                    "WHERE n.nspname = current_schema()"
                )
            ).all()
            for name, path in relations:
                if path is None:
                    continue
                # The whole first segment (test tables are far below its 1 GiB).
                data = connection.execute(
                    text("SELECT pg_read_binary_file(:path, 0, pg_relation_size(:name), true)"),
                    {"path": path, "name": name},
                ).scalar_one_or_none()
                for what, needle in needles.items():
                    if data is not None and needle in bytes(data):
                        found.setdefault(what, []).append(name)
    finally:
        engine.dispose()
    return found


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, memoryview)):
        return bytes(value)
    return str(value).encode()


def merged(*founds: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for found in founds:
        for what, where in found.items():
            result.setdefault(what, []).extend(where)
    return result
