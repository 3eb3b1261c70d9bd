"""The DeFiLlama-compatible HTTP poller (market-data source for ``defi-realtime collect``).

Fetches ``GET {base_url}/protocols`` and turns the answer into ingest items with the same
reader as the file import, so a poll and an import of the same payload are the same facts
(and a repeated poll of unchanged data records nothing: identical observations are no-ops).
Coin prices come from ``GET {coins_url}/prices/current/{coins}``.

Times are upstream's: a price is stamped with its own ``timestamp``; ``/protocols`` carries
none per protocol, so its observations take the answer's ``Last-Modified`` (when the data
last changed upstream), else its ``Date``, and only without either the local clock. A poll
of an unchanged answer then repeats the same observations, which record nothing.

Transient failures (connection errors, 429, 5xx) are retried with exponential backoff and
jitter (tenacity); other 4xx fail at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Final

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


PRICE_SOURCE: Final = "defillama:coins"


def upstream_time(headers: httpx.Headers) -> float:
    """When the answer's data is from: ``Last-Modified``, else ``Date``, else now."""
    for name in ("last-modified", "date"):
        raw = headers.get(name)
        if raw:
            try:
                return parsedate_to_datetime(raw).timestamp()
            except (TypeError, ValueError):
                continue
    return time.time()


class DefiLlamaHttpSource:
    """Polls a DeFiLlama-compatible API (and its coins API)."""

    def __init__(
        self,
        base_url: str,
        *,
        coins_url: str | None = None,
        timeout: float = 30.0,
        attempts: int = 5,
        backoff: float = 1.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.coins_url = (coins_url or base_url).rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._attempts = attempts
        self._backoff = backoff

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def _get(self, url: str) -> httpx.Response:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential_jitter(multiplier=self._backoff, max=30),
            reraise=True,
        ):
            with attempt:
                response = await self._client.get(url)
                response.raise_for_status()
        return response

    async def fetch_protocols(self) -> tuple[float, list[ReadItem]]:
        """One poll: (upstream's time of the data, the items)."""
        response = await self._get(f"{self.base_url}/protocols")
        observed_at = upstream_time(response.headers)
        return observed_at, list(_items(response.json(), observed_at))

    async def current_tvl(self) -> dict[str, float]:
        """Each protocol's current total TVL by slug, from ``/protocols`` (the
        ``UpstreamTvl`` port: what reconciliation compares the log's values with)."""
        _, items = await self.fetch_protocols()
        return {
            str(read.item["protocol"]): float(read.item["value"])
            for read in items
            if read.kind == "observation"
            and read.item is not None
            and read.item.get("metric") == "tvl"
            and read.item.get("chain") == "total"
        }

    async def fetch_prices(self, coins: Sequence[str]) -> list[ReadItem]:
        """The current prices of ``coins`` (DeFiLlama ids), each stamped with its own
        upstream ``timestamp``; a coin upstream does not price is left out, an entry that is
        not a price becomes an ``invalid`` item."""
        if not coins:
            return []
        response = await self._get(f"{self.coins_url}/prices/current/{','.join(coins)}")
        document = response.json()
        found = document.get("coins") if isinstance(document, dict) else None
        if not isinstance(found, dict):
            return [ReadItem("invalid", None, 1, 'expected {"coins": {...}}')]
        return [_price(index, coin, entry) for index, (coin, entry) in enumerate(found.items(), 1)]


def _price(line: int, coin: str, entry: Any) -> ReadItem:
    if not isinstance(entry, dict) or "price" not in entry or "timestamp" not in entry:
        return ReadItem("invalid", None, line, f"{coin}: expected a price and its timestamp")
    item = {
        "token": coin,
        "price": entry["price"],
        "observed_at": entry["timestamp"],
        "source": PRICE_SOURCE,
    }
    if entry.get("confidence") is not None:
        item["confidence"] = entry["confidence"]
    return ReadItem("price", item, line)


def _items(document: object, observed_at: float) -> Iterator[ReadItem]:
    yield from protocols_document_items(document, observed_at=observed_at)
