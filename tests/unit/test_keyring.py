"""The one key lookup every entrypoint uses: cached, misses included, for a bounded time."""

from __future__ import annotations

import asyncio

from defi_realtime.application.keyring import KeyRing
from defi_realtime.domain.api_key import ApiKey


def test_lookups_are_cached_hits_and_misses_alike() -> None:
    key = ApiKey.issue("drt_secret", name="alice")
    calls: list[str] = []

    def lookup(secret: str) -> ApiKey | None:
        calls.append(secret)
        return key if secret == "drt_secret" else None

    keyring = KeyRing(lookup)

    async def main() -> None:
        for _ in range(3):
            assert await keyring.identify("drt_secret") is key
            assert await keyring.identify("drt_wrong") is None

    asyncio.run(main())
    assert calls == ["drt_secret", "drt_wrong"]


def test_a_cached_answer_expires() -> None:
    answers: list[ApiKey | None] = [ApiKey.issue("drt_secret", name="alice"), None]
    keyring = KeyRing(lambda _secret: answers.pop(0), ttl=0.05)

    async def main() -> None:
        assert await keyring.identify("drt_secret") is not None
        await asyncio.sleep(0.1)
        # Revoked meanwhile: after the cache time the lookup says so.
        assert await keyring.identify("drt_secret") is None

    asyncio.run(main())
