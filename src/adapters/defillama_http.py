"""The DeFiLlama-compatible HTTP poller (market-data source for ``defi-realtime collect``).

Fetches ``GET {base_url}/protocols`` and turns the answer into ingest items with the same
reader as the file import, so a poll and an import of the same payload are the same facts
(and a repeated poll of unchanged data records nothing: identical observations are no-ops).
Transient failures (connection errors, 429, 5xx) are retried with exponential backoff and
jitter (tenacity); other 4xx fail at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .defillama_files import ReadItem, protocols_document_items


def _transient(error: BaseException) -> bool:
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, httpx.HTTPStatusError):
        status = error.response.status_code
        return status == 429 or status >= 500
    return False


class DefiLlamaHttpSource:
    """Polls a DeFiLlama-compatible API."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        attempts: int = 5,
        backoff: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._attempts = attempts
        self._backoff = backoff

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def fetch_protocols(self) -> tuple[float, list[ReadItem]]:
        """One poll: (the time it was taken, the items)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(initial=self._backoff, max=30),
            reraise=True,
        ):
            with attempt:
                response = await self._client.get(f"{self.base_url}/protocols")
                response.raise_for_status()
                document = response.json()
        observed_at = time.time()
        return observed_at, list(_items(document, observed_at))


def _items(document: object, observed_at: float) -> Iterator[ReadItem]:
    yield from protocols_document_items(document, observed_at=observed_at)
