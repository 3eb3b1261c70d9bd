"""Crypto-shredding and export on the embedded stores (SQLite files): personal fields are
sealed in the event store, an erase destroys the account's key and purges the read models,
after which no byte of the account's email, contact, webhook URLs or secret is left in any
file, the log still replays (redacted), and another account is untouched.

The sealing mapper's own rules (clear events from before, fields bound to their event, no
clear text written for an erased account, no key store) are tested on the same stores.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from uuid import uuid4

import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.sql_account_keys import SqlAccountKeys
from defi_realtime.application.app import AccountErased, AccountNotFound, DefiRealtime
from defi_realtime.application.personal_fields import REDACTED, subject_of
from defi_realtime.domain.account import Account
from defi_realtime.domain.alert_rule import AlertRule
from defi_realtime.domain.subscription import Subscription
from defi_realtime.entrypoints.privacy_api import export_answer
from tests.privacy_world import Customer, World, found_in_files


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "events.sqlite"),
    }
    built = World(env, f"sqlite:///{tmp_path / 'history.sqlite'}")
    try:
        yield built
    finally:
        built.close()


def _events_files(tmp_path: Path) -> Path:
    events = tmp_path / "events-only"
    events.mkdir()
    for path in tmp_path.glob("events.sqlite*"):
        (events / path.name).write_bytes(path.read_bytes())
    return events


def test_personal_fields_are_sealed_in_the_event_store_and_exported_to_their_owner(
    world: World, tmp_path: Path
) -> None:
    alice, bob = world.customer("alice"), world.customer("bob")
    # The search itself finds what is there: the read models hold the rule's channels.
    assert "webhook URL" in found_in_files(tmp_path, alice.personal)
    assert found_in_files(_events_files(tmp_path), alice.personal) == {}
    # ... and the application reads them back opened.
    account = world.app.get_account(alice.account_id)
    assert (account.name, account.contact) == ("alice Ltd", alice.contact)
    rule = world.app.get_alert_rule(alice.rule_id, alice.owner)
    assert rule.name == "alice watch"
    assert [channel.model_dump(exclude_none=True) for channel in rule.channels] == [
        {"kind": "webhook", "url": alice.url, "secret": alice.secret},
        {"kind": "email", "address": alice.email},
    ]
    [key] = world.app.api_keys(alice.account_id)
    assert key.name == "alice-key"
    assert world.app.get_subscription(alice.subscription_id, alice.owner).name == "alice-feed"
    [issued] = world.app.recorder.select_events(key.id, limit=1)
    assert b"alice-key" not in issued.state

    _sealed_fields_open_only_in_their_own_event(world, alice)
    _without_the_key_store_sealed_fields_read_redacted(world, alice)
    _events_written_before_sealing_replay_as_they_were(world)
    _export_holds_everything_about_the_account_and_no_secret(world, alice, bob)


def _assert_erased_replay(app: DefiRealtime, alice: Customer) -> None:
    account = app.repository.get(alice.account_id)
    assert isinstance(account, Account)
    assert (account.name, account.contact, account.erased) == (REDACTED, REDACTED, True)
    [key] = app.api_keys(alice.account_id)
    assert (key.name, key.revoked) == (REDACTED, True)
    assert app.authenticate(alice.key) is None
    rule = app.repository.get(alice.rule_id)
    assert isinstance(rule, AlertRule)
    assert rule.state == "deleted"
    assert rule.name == REDACTED
    assert [channel.model_dump(exclude_none=True) for channel in rule.channels] == [
        {"kind": "webhook", "url": REDACTED, "secret": REDACTED},
        {"kind": "email", "address": REDACTED},
    ]
    subscription = app.repository.get(alice.subscription_id)
    assert isinstance(subscription, Subscription)
    assert (subscription.closed, subscription.name) == (True, REDACTED)


def test_after_erase_no_file_holds_the_account_and_the_log_still_replays(
    world: World, tmp_path: Path
) -> None:
    alice, bob = world.customer("alice"), world.customer("bob")
    data_key = world.keys.key_for(subject_of(alice.owner))
    assert data_key is not None
    assert found_in_files(tmp_path, {"data key": data_key.secret})  # the search finds it

    erasure = world.privacy.erase(alice.account_id)

    assert (erasure.keys_revoked, erasure.rules_deleted, erasure.subscriptions_closed) == (1, 1, 2)
    assert erasure.key_destroyed
    assert erasure.scrubbed
    assert erasure.rows_purged >= 3  # the rule's row, its attempt, its journaled job
    needles = {**alice.personal, "data key": data_key.secret}
    assert found_in_files(tmp_path, needles) == {}
    # The followers keep folding the log: nothing of hers comes back.
    world.sync()
    assert found_in_files(tmp_path, needles) == {}

    # A restart replays every event: hers load redacted, Bob's as they were.
    reopened = world.reopened()
    try:
        _assert_erased_replay(reopened, alice)
        bob_rule = reopened.get_alert_rule(bob.rule_id, bob.owner)
        assert bob_rule.channels[0].model_dump()["url"] == bob.url
        assert reopened.get_account(bob.account_id).contact == bob.contact
        assert reopened.authenticate(bob.key) is not None
        log = EventStoreLog(reopened)
        try:
            batch = log.read(0, 1_000_000)
        finally:
            log.close()
        assert batch.entries
    finally:
        reopened.close()
    # Rebuilding the read model from the log brings back her rule redacted only.
    world.history.reset()
    world.sync()
    assert found_in_files(tmp_path, needles) == {}
    bob_found = found_in_files(tmp_path, bob.personal)
    assert "webhook URL" in bob_found, "the other account's data is untouched"
    assert [view.id for view in world.history.alert_rules(bob.owner)] == [str(bob.rule_id)]
    assert [a.rule_id for a in world.deliveries.attempts(str(bob.rule_id))] == [str(bob.rule_id)]

    _an_erased_account_is_erased_once_and_takes_no_new_key(world, alice)
    _nothing_is_written_in_clear_for_an_erased_subject(world, alice)


def _an_erased_account_is_erased_once_and_takes_no_new_key(world: World, alice: Customer) -> None:
    again = world.privacy.erase(alice.account_id)  # records nothing more, scrubs again
    assert (again.keys_revoked, again.rules_deleted, again.key_destroyed) == (0, 0, False)
    assert again.scrubbed
    with pytest.raises(AccountErased):
        world.app.issue_api_key("again", account_id=alice.account_id)
    with pytest.raises(AccountNotFound):
        world.privacy.erase(uuid4())


def _nothing_is_written_in_clear_for_an_erased_subject(world: World, alice: Customer) -> None:
    # A late write naming her (a node that had not heard yet) is redacted, never clear.
    late = Account.open("late", alice.email)
    late_state = dict(vars(late.collect_events()[0]))
    late_state["legacy_owner"] = alice.owner
    event = object.__new__(Account.Opened)  # type: ignore[attr-defined]
    object.__setattr__(event, "__dict__", late_state)
    stored = world.app.mapper.to_stored_event(event)
    assert alice.email.encode() not in stored.state
    assert world.app.mapper.to_domain_event(stored).contact == REDACTED  # type: ignore[attr-defined]


def _events_written_before_sealing_replay_as_they_were(world: World) -> None:
    # A bare application (no key store) writes as before this change: in clear.
    bare = DefiRealtime(env=world.env)
    try:
        account_id = bare.open_account("old", "old@mail.example.org")
    finally:
        bare.close()
    stored = world.app.recorder.select_events(account_id)
    assert b"old@mail.example.org" in stored[0].state
    assert world.app.get_account(account_id).contact == "old@mail.example.org"


def _without_the_key_store_sealed_fields_read_redacted(world: World, alice: Customer) -> None:
    bare = DefiRealtime(env=world.env)
    try:
        assert bare.get_account(alice.account_id).contact == REDACTED
        assert bare.get_alert_rule(alice.rule_id, alice.owner).name == REDACTED
    finally:
        bare.close()


def _sealed_fields_open_only_in_their_own_event(world: World, alice: Customer) -> None:
    [opened] = world.app.recorder.select_events(alice.account_id, limit=1)
    assert b'"_type_":"sealed"' in opened.state
    moved = StoredEvent(uuid4(), opened.originator_version, opened.topic, opened.state)
    with pytest.raises(MapperDeserialisationError):
        world.app.mapper.to_domain_event(moved)


def test_key_store_keys_are_per_account_and_destroyed_for_good(tmp_path: Path) -> None:
    keys = SqlAccountKeys(f"sqlite:///{tmp_path / 'keys.sqlite'}")
    try:
        first = keys.key_for("subject-a")
        assert first is not None
        assert keys.key_for("subject-a") == first
        other = keys.key_for("subject-b")
        assert other is not None
        assert other.secret != first.secret
        assert keys.find(first.key_id) == first.secret
        assert keys.destroy("subject-a").rows == 1
        assert keys.find(first.key_id) is None
        assert keys.key_for("subject-a") is None  # erased: no new key either
        assert keys.destroy("subject-never-keyed").rows == 0
        assert keys.key_for("subject-never-keyed") is None
        assert keys.find(other.key_id) == other.secret
        raw = b"".join(path.read_bytes() for path in tmp_path.glob("keys.sqlite*"))
        assert first.secret not in raw
        assert other.secret in raw
    finally:
        keys.close()


def _export_holds_everything_about_the_account_and_no_secret(
    world: World, alice: Customer, bob: Customer
) -> None:
    exported = export_answer(world.privacy.export(alice.account_id))
    body = json.loads(exported.model_dump_json())
    assert body["account"]["id"] == str(alice.account_id)
    assert body["account"]["contact"] == alice.contact
    assert [key["name"] for key in body["keys"]] == ["alice-key"]
    [rule] = body["alert_rules"]
    assert rule["id"] == str(alice.rule_id)
    assert rule["name"] == "alice watch"
    assert rule["channels"] == [
        {"kind": "webhook", "url": alice.url, "secret_set": True},
        {"kind": "email", "address": alice.email},
    ]
    assert [attempt["channel"]["target"] for attempt in rule["deliveries"]] == [alice.url]
    feeds = {s["name"]: s for s in body["subscriptions"]}
    assert feeds["alice-feed"]["id"] == str(alice.subscription_id)
    assert feeds["alice-hook"]["webhook"] == {"url": f"{alice.url}/feed", "secret_set": True}
    text = exported.model_dump_json()
    [key] = world.app.api_keys(alice.account_id)
    for secret in (alice.key, key.key_hash, alice.secret):
        assert secret not in text
    for theirs in asdict(bob).values():
        assert str(theirs) not in text
