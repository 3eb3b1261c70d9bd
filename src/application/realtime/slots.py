"""Concurrent connections per client address, counted in this process (ADR 0049)."""

from __future__ import annotations

__all__ = ["LocalConnectionSlots"]


class LocalConnectionSlots:
    """Implements ``ConnectionSlots`` for one node: the count is this process's own (no
    REDIS_URL, or rate limits in process memory)."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    async def acquire(self, address: str, limit: int) -> bool:
        return self.take(address, limit)

    def take(self, address: str, limit: int) -> bool:
        """``acquire`` without awaiting (nothing here waits)."""
        count = self.held.get(address, 0)
        if count >= limit:
            return False
        self.held[address] = count + 1
        return True

    def release(self, address: str) -> None:
        count = self.held.get(address, 0) - 1
        if count > 0:
            self.held[address] = count
        else:
            self.held.pop(address, None)

    async def aclose(self) -> None:
        self.held.clear()
