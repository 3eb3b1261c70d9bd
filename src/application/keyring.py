"""Who an API key belongs to: the one lookup every entrypoint (REST, WebSocket) goes through.

Looking a key up reads its aggregate from the event store (a thread, the store is
synchronous); a client sends its key with every request, so answers are cached, in one
cache shared by every transport. The cache never decides whether a key still works: every
answer is checked against the key's state (``ApiKey.usable``: revoked, or past the grace of
a rotation) and the node's follower drops what the cache holds about a key as soon as the
log says it changed (``follow``: ``api_key_revoked``, ``api_key_rotated_out``,
``api_key_issued`` for a key looked up before it existed). So a revocation takes effect on
every node as soon as its follower has the event, with no cache window
(docs/adr/0039-accounts-own-keys.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final
from uuid import UUID

from cachetools import LRUCache, TTLCache

from ..domain.api_key import ApiKey, hash_key
from .log import API_KEY_KINDS, LogBatch

__all__ = ["KEY_CACHE_SIZE", "KEY_MISS_SECONDS", "KeyRing"]

KEY_CACHE_SIZE: Final = 10_000
# Unknown keys are remembered this long (a client hammering with a wrong key costs one read
# per interval); a key issued meanwhile is forgotten at once by ``follow`` anyway.
KEY_MISS_SECONDS: Final = 5.0


class KeyRing:
    """``identify(secret)`` / ``by_id(key_id)``: the key, if it works now; else None."""

    def __init__(
        self,
        lookup: Callable[[UUID], ApiKey | None],
        *,
        size: int = KEY_CACHE_SIZE,
        miss_ttl: float = KEY_MISS_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self._keys: LRUCache[UUID, ApiKey] = LRUCache(maxsize=size)
        self._misses: TTLCache[UUID, bool] = TTLCache(maxsize=size, ttl=miss_ttl)
        # Bumped by every ``forget``: a lookup that started before it may have read the key
        # as it was, so its answer is not cached.
        self._generation = 0

    async def identify(self, secret: str) -> ApiKey | None:
        """The key whose secret is ``secret``, if it works now."""
        return await self.by_id(ApiKey.id_for(hash_key(secret)))

    async def by_id(self, key_id: UUID) -> ApiKey | None:
        """The key ``key_id`` (a session token names its key by id), if it works now."""
        key = self._keys.get(key_id)
        if key is None:
            if key_id in self._misses:
                return None
            generation = self._generation
            key = await asyncio.to_thread(self._lookup, key_id)
            if generation == self._generation:
                if key is None:
                    self._misses[key_id] = True
                else:
                    self._keys[key_id] = key
        if key is None or not key.usable(self._clock()):
            return None
        return key

    def forget(self, key_id: UUID) -> None:
        """Drop what is cached about ``key_id``: the next request reads it again."""
        self._generation += 1
        self._keys.pop(key_id, None)
        self._misses.pop(key_id, None)

    def follow(self, batch: LogBatch) -> None:
        """Forget every key the batch says changed (the node follower calls this for each
        batch, before the hub closes the sockets of revoked keys)."""
        for entry in batch.entries:
            if entry.kind in API_KEY_KINDS:
                self.forget(UUID(entry.key))
