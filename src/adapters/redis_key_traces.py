"""``KeyTraces`` in Redis: the rate-limit counters kept under an API key's id.

The limiter (``RedisRateLimiter``, the ``limits`` library) names its counters
``<prefix>limits:<namespace>/<quota>/<kind>:key:<key id>/<limit>/<window>/<unit>``; an erased
account's keys are revoked, and their counters are deleted with them rather than left to
expire (docs/adr/0042-crypto-shredding.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .redis_hot_projection import _glob_escape

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisKeyTraces"]

_SCAN_COUNT: Final = 500


class RedisKeyTraces:
    """Implements ``KeyTraces`` over the node's Redis client, under its key prefix."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self._client = client
        self._prefix = f"{prefix}limits:"

    async def purge(self, key_ids: Sequence[str]) -> int:
        purged = 0
        for key_id in key_ids:
            pattern = f"{_glob_escape(self._prefix)}*:key:{_glob_escape(key_id)}/*"
            names = [
                name
                async for name in self._client.scan_iter(match=pattern, count=_SCAN_COUNT)
                # MATCH is a glob: check the literal prefix too rather than trust the escaping.
                if _text(name).startswith(self._prefix)
            ]
            if names:
                purged += int(await self._client.delete(*names))
        return purged


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
