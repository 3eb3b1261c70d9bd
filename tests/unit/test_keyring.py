"""The one key lookup every entrypoint uses: cached until the log says the key changed."""

from __future__ import annotations

import asyncio
import threading
from uuid import UUID

from defi_realtime.application.keyring import KeyRing
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.domain.account import Account
from defi_realtime.domain.api_key import ApiKey

ACCOUNT = Account.open("alice")


def _key(secret: str = "drt_secret") -> ApiKey:
    return ApiKey.issue(secret, name="alice", account=ACCOUNT)


def _entry(kind: str, key_id: UUID, position: int = 1, **data: object) -> LogBatch:
    entry = LogEntry(position=position, kind=kind, key=str(key_id), data=data, recorded_at=0.0)
    return LogBatch(after=position - 1, last=position, entries=(entry,))


def test_lookups_are_cached_hits_and_misses_alike() -> None:
    key = _key()
    calls: list[UUID] = []

    def lookup(key_id: UUID) -> ApiKey | None:
        calls.append(key_id)
        return key if key_id == key.id else None

    keyring = KeyRing(lookup)

    async def main() -> None:
        for _ in range(3):
            assert await keyring.identify("drt_secret") is key
            assert await keyring.identify("drt_wrong") is None
            assert await keyring.by_id(key.id) is key

    asyncio.run(main())
    assert calls == [key.id, _key("drt_wrong").id]


def test_a_revocation_on_the_log_drops_the_cached_key_at_once() -> None:
    stored = _key()
    keyring = KeyRing(lambda _id: stored)

    async def main() -> None:
        assert await keyring.identify("drt_secret") is not None
        revoked = _key()
        revoked.revoke()
        nonlocal stored
        stored = revoked
        # No time window: until the log says so the cached answer stands, and the moment
        # the follower hands over the revocation it is gone.
        assert await keyring.identify("drt_secret") is not None
        keyring.follow(_entry("api_key_revoked", stored.id))
        assert await keyring.identify("drt_secret") is None

    asyncio.run(main())


def test_a_key_issued_on_another_node_is_found_once_the_log_says_so() -> None:
    key = _key()
    stored: list[ApiKey | None] = [None]
    keyring = KeyRing(lambda _id: stored[0], miss_ttl=3_600)

    async def main() -> None:
        assert await keyring.identify("drt_secret") is None  # a miss, cached for an hour
        stored[0] = key
        assert await keyring.identify("drt_secret") is None
        keyring.follow(_entry("api_key_issued", key.id, account_id=str(ACCOUNT.id)))
        assert await keyring.identify("drt_secret") is key

    asyncio.run(main())


def test_a_rotated_out_key_stops_at_the_end_of_its_grace_even_when_cached() -> None:
    key = _key()
    key.rotate_out(grace_until=1_000.0)
    now = [999.0]
    keyring = KeyRing(lambda _id: key, clock=lambda: now[0])

    async def main() -> None:
        assert await keyring.identify("drt_secret") is key
        now[0] = 1_000.0
        assert await keyring.identify("drt_secret") is None

    asyncio.run(main())


def test_a_lookup_overtaken_by_a_revocation_is_not_cached() -> None:
    live, revoked = _key(), _key()
    revoked.revoke()
    started, release = threading.Event(), threading.Event()
    answers = [live, revoked]

    def lookup(_id: UUID) -> ApiKey | None:
        started.set()
        release.wait(5)
        return answers.pop(0)

    keyring = KeyRing(lookup)

    async def main() -> None:
        pending = asyncio.create_task(keyring.identify("drt_secret"))
        await asyncio.to_thread(started.wait, 5)
        # The revocation arrives while the read (which saw the key live) is under way.
        keyring.follow(_entry("api_key_revoked", live.id))
        release.set()
        assert await pending is live  # concurrent with the revocation: either answer
        assert await keyring.identify("drt_secret") is None  # but not kept

    asyncio.run(main())
