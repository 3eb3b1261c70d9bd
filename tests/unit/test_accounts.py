"""Accounts and keys: accounts apart by id, legacy keys' owners mapped to accounts,
rotation, allow-lists, the client-address rule, session tokens, sockets of changed keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest

from defi_realtime.application.app import (
    AccountNotFound,
    ApiKeyNotFound,
    DefiRealtime,
)
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.realtime import CLOSE_UNAUTHORIZED, Connection, RealtimeHub
from defi_realtime.domain.account import Account, legacy_account_id
from defi_realtime.domain.api_key import ApiKey, InvalidAllowList, hash_key
from defi_realtime.domain.errors import InvalidTransition
from defi_realtime.entrypoints.client_address import client_address
from defi_realtime.entrypoints.sessions import SessionTokens, session_secret

T0 = 1_765_000_000.0
BELOW = {"kind": "threshold", "direction": "below", "value": 5}


@pytest.fixture
def app() -> Iterator[DefiRealtime]:
    application = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        yield application
    finally:
        application.close()


def _legacy_key(app: DefiRealtime, secret: str, owner: str) -> None:
    """A key as issued before accounts: ``Issued`` without an account, owner by name."""
    app.save(ApiKey(key_hash=hash_key(secret), name=owner, owner=owner, tier="pro"))


# --- accounts --------------------------------------------------------------------------------


def test_an_account_is_its_id_whatever_its_name(app: DefiRealtime) -> None:
    first, second = app.open_account("acme"), app.open_account("acme")
    assert first != second
    assert app.get_account(first).owner == str(first)
    with pytest.raises(AccountNotFound):
        app.get_account(UUID(int=7))


def test_keys_of_one_account(app: DefiRealtime) -> None:
    account_id = app.open_account("acme")
    one = app.issue_api_key("ci", account_id=account_id)
    two = app.issue_api_key("laptop", tier="pro", account_id=account_id)
    other = app.issue_api_key("ci")  # a new account
    keys = app.api_keys(account_id)
    assert [key.name for key in keys] == ["ci", "laptop"]
    assert {key.owner for key in keys} == {str(account_id)}
    assert app.authenticate(one) is not None
    assert app.authenticate(two) is not None
    found = app.authenticate(other)
    assert found is not None
    assert found.account_id != account_id
    with pytest.raises(AccountNotFound):
        app.issue_api_key("x", account_id=UUID(int=1))


def test_legacy_keys_keep_their_owner_and_their_rules(app: DefiRealtime) -> None:
    """Keys issued before accounts: their owner string maps to one derived account, whose
    new keys record their data under the same owner, so the old rules stay theirs."""
    _legacy_key(app, "drt_old", "alice")
    price = {"token": "coingecko:ethereum", "price": 3_000.0, "observed_at": 1_700_000_000.0}
    app.ingest([build_batch(prices=[price])])  # a token rule needs a known token
    app.create_alert_rule("alice", {"token": "coingecko:ethereum"}, BELOW, [{"kind": "websocket"}])
    old = app.authenticate("drt_old")
    assert old is not None
    assert (old.owner, old.account_id) == ("alice", legacy_account_id("alice"))
    assert app.accounts() == [legacy_account_id("alice")]

    new = app.issue_api_key("rotated-in", account_id=legacy_account_id("alice"))
    key = app.authenticate(new)
    assert key is not None
    assert (key.owner, key.account_id) == ("alice", legacy_account_id("alice"))
    [account] = app.accounts()
    assert isinstance(account, Account)
    assert (account.id, account.owner, account.legacy_owner) == (
        legacy_account_id("alice"),
        "alice",
        "alice",
    )
    # A new account named alice is not alice's.
    stranger = app.authenticate(app.issue_api_key("alice"))
    assert stranger is not None
    assert stranger.owner != "alice"


def test_rotation_and_revocation(app: DefiRealtime) -> None:
    account_id = app.open_account()
    old = app.issue_api_key("ci", tier="enterprise", account_id=account_id, allowed_ips=["::1"])
    new = app.rotate_api_key(old, grace=3_600)
    rotated, successor = app.authenticate(old), app.authenticate(new)
    assert rotated is not None
    assert successor is not None
    assert rotated.grace_until is not None
    assert rotated.valid_until() == rotated.grace_until
    assert (successor.account_id, successor.name, successor.tier, successor.allowed_ips) == (
        account_id,
        "ci",
        "enterprise",
        ("::1/128",),
    )
    with pytest.raises(InvalidTransition, match="already rotated"):
        app.rotate_api_key(old, grace=1)
    # Without grace the old key stops at once; by id, as keys list shows it.
    app.rotate_api_key(str(successor.id), grace=0)
    assert app.authenticate(new) is None
    app.revoke_api_key(hash_key(old))
    assert app.authenticate(old) is None
    with pytest.raises(ApiKeyNotFound):
        app.revoke_api_key("drt_unknown")


# --- allow-lists -------------------------------------------------------------------------------


def test_allow_lists_are_for_enterprise_keys_and_hold_networks() -> None:
    account = Account.open()
    with pytest.raises(InvalidAllowList, match="enterprise"):
        ApiKey.issue("drt_x", "x", account, "pro", ["10.0.0.0/8"])
    with pytest.raises(InvalidAllowList, match="not an IP"):
        ApiKey.issue("drt_x", "x", account, "enterprise", ["10.0.0.0/33"])
    key = ApiKey.issue("drt_x", "x", account, "enterprise", ["10.1.2.3/8", "2001:db8::/32"])
    assert key.allowed_ips == ("10.0.0.0/8", "2001:db8::/32")
    assert key.allows("10.200.0.1")
    assert key.allows("::ffff:10.0.0.1")  # an IPv4 peer on a dual-stack socket
    assert key.allows("2001:db8::1")
    assert not key.allows("192.168.0.1")
    assert not key.allows(None)
    assert not key.allows("not-an-address")
    assert ApiKey.issue("drt_y", "y", account).allows(None)  # no list: anywhere


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("203.0.113.9", "10.9.9.9", [], "203.0.113.9"),  # nobody trusted: the peer
        ("203.0.113.9", "10.9.9.9", ["10.0.0.0/8"], "203.0.113.9"),  # peer not a proxy
        ("10.0.0.2", "198.51.100.7", ["10.0.0.0/8"], "198.51.100.7"),
        # A client writing its own X-Forwarded-For cannot hide behind it.
        ("10.0.0.2", "1.2.3.4, 198.51.100.7", ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", "198.51.100.7, 10.0.0.5", ["10.0.0.0/8"], "198.51.100.7"),
        ("10.0.0.2", "garbage, 10.0.0.5", ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", None, ["10.0.0.0/8"], "10.0.0.2"),
        (None, "1.2.3.4", ["10.0.0.0/8"], None),
    ],
)
def test_client_address(
    peer: str | None, forwarded: str | None, trusted: list[str], client: str | None
) -> None:
    import ipaddress

    headers = {} if forwarded is None else {"x-forwarded-for": forwarded}
    networks = [ipaddress.ip_network(network) for network in trusted]
    assert client_address(peer, headers, networks) == client


# --- session tokens ----------------------------------------------------------------------------


def test_session_tokens() -> None:
    now = [T0]
    tokens = SessionTokens(lambda: "s" * 32, ttl=900, clock=lambda: now[0])
    key = ApiKey.issue("drt_x", "x", Account.open())
    minted = tokens.mint(key)
    assert minted.expires_at == T0 + 900
    assert tokens.key_id(minted.token) == key.id
    assert tokens.key_id(minted.token + "x") is None
    assert (
        SessionTokens(lambda: "t" * 32, ttl=900, clock=lambda: now[0]).key_id(minted.token) is None
    )  # another secret
    assert tokens.key_id("drt_not_a_token") is None
    now[0] = T0 + 900
    assert tokens.key_id(minted.token) is None  # expired
    # A rotated-out key's tokens end with its grace.
    key.rotate_out(grace_until=T0 + 1_000)
    assert tokens.mint(key).expires_at == T0 + 1_000


def test_the_session_secret_is_made_once(tmp_path: Any) -> None:
    first = session_secret(None, tmp_path / "data")
    assert len(first) >= 32
    assert session_secret(None, tmp_path / "data") == first
    assert (tmp_path / "data" / "session-secret").stat().st_mode & 0o077 == 0
    assert session_secret("configured", tmp_path / "data") == "configured"


# --- sockets of changed keys --------------------------------------------------------------------


class _Log:
    def read(self, after: int, limit: int) -> LogBatch:
        return LogBatch(after=after, last=after)

    def head(self) -> int:
        return 0


def _socket(hub: RealtimeHub, key_id: str, closes: list[int]) -> Connection:
    connection = Connection(
        "owner",
        close=lambda code, _reason: closes.append(code),
        write=lambda _items: None,
        key_id=key_id,
    )
    hub.connect(connection)
    return connection


def _batch(kind: str, key_id: str, **data: Any) -> LogBatch:
    entry = LogEntry(position=1, kind=kind, key=key_id, data=data, recorded_at=T0)
    return LogBatch(after=0, last=1, entries=(entry,))


def test_a_revoked_key_s_sockets_close_and_a_rotated_one_s_at_its_grace() -> None:
    async def main() -> None:
        hub = RealtimeHub(_Log(), HotState())  # type: ignore[arg-type]
        closes: dict[str, list[int]] = {"a": [], "b": [], "c": []}
        sockets = {name: _socket(hub, name, closes[name]) for name in closes}
        await hub.deliver(_batch("api_key_revoked", "a"))
        assert sockets["a"].closed
        assert not sockets["b"].closed
        assert closes["a"] == [CLOSE_UNAUTHORIZED]

        grace_until = 4_000_000_000.0
        await hub.deliver(
            LogBatch(
                after=1,
                last=2,
                entries=(
                    LogEntry(2, "api_key_rotated_out", "b", {"grace_until": grace_until}, T0),
                ),
            )
        )
        assert not sockets["b"].closed
        hub.sweep(0.0, 1e9, 1e9, wall=grace_until - 1)
        assert not sockets["b"].closed
        hub.sweep(0.0, 1e9, 1e9, wall=grace_until)
        assert sockets["b"].closed
        assert closes["b"] == [CLOSE_UNAUTHORIZED]
        assert not sockets["c"].closed
        await asyncio.sleep(0)

    asyncio.run(main())
