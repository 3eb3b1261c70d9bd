"""Who an API key belongs to: the one lookup every entrypoint (REST, WebSocket) goes through.

Looking a key up reads its aggregate from the event store (a thread, the store is
synchronous); a client sends its key with every request, so answers are cached for a few
seconds in one cache shared by every transport (a revoked key is refused within
``ttl`` seconds on every entrypoint alike).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from cachetools import TTLCache

from ..domain.api_key import ApiKey

__all__ = ["KEY_CACHE_SECONDS", "KeyRing"]

KEY_CACHE_SECONDS: Final = 5.0
KEY_CACHE_SIZE: Final = 10_000


class KeyRing:
    """``identify(secret)``: the live key for a secret, or None (unknown or revoked)."""

    def __init__(
        self,
        lookup: Callable[[str], ApiKey | None],
        *,
        ttl: float = KEY_CACHE_SECONDS,
        size: int = KEY_CACHE_SIZE,
    ) -> None:
        self._lookup = lookup
        # Misses are cached too: a client hammering with a wrong key costs one read per
        # ``ttl``, not one per request.
        self._cache: TTLCache[str, ApiKey | None] = TTLCache(maxsize=size, ttl=ttl)

    async def identify(self, secret: str) -> ApiKey | None:
        try:
            return self._cache[secret]
        except KeyError:
            pass
        found = await asyncio.to_thread(self._lookup, secret)
        self._cache[secret] = found
        return found
