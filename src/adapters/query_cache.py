"""``QueryCache`` adapters: answers of aggregate queries, keyed by the query and the log
position they were computed at, so a cached answer is never stale (a new fact moves the
position, and with it the key).

In-process (``cachetools``' LRU, bounded by entries and by bytes) without Redis; in Redis
with a time to live when ``REDIS_URL`` is set, so every node shares the answers.
"""

from __future__ import annotations

from typing import Final

from cachetools import LRUCache
from redis.asyncio import Redis

__all__ = ["MemoryQueryCache", "RedisQueryCache"]

DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_TTL_SECONDS: Final = 3_600


class MemoryQueryCache:
    """Least recently used answers, at most ``max_bytes`` of them in all."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._answers: LRUCache[str, bytes] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._max_bytes = max_bytes

    async def get(self, key: str) -> bytes | None:
        return self._answers.get(key)

    async def put(self, key: str, answer: bytes) -> None:
        if len(answer) <= self._max_bytes:  # one answer larger than the whole cache: skip
            self._answers[key] = answer


class RedisQueryCache:
    """Answers in Redis under ``{prefix}query:{key}``, kept ``ttl`` seconds."""

    def __init__(self, client: Redis, prefix: str, ttl: int = DEFAULT_TTL_SECONDS) -> None:
        self._client = client
        self._prefix = f"{prefix}query:"
        self._ttl = ttl

    async def get(self, key: str) -> bytes | None:
        found: bytes | str | None = await self._client.get(self._prefix + key)
        # The client decodes to str only when made with decode_responses=True.
        return found.encode() if isinstance(found, str) else found

    async def put(self, key: str, answer: bytes) -> None:
        await self._client.set(self._prefix + key, answer, ex=self._ttl)
