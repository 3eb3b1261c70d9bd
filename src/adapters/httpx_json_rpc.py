"""``HttpxJsonRpc``: an EVM node's JSON-RPC over HTTP (httpx), with failover and a budget.

* Batching: ``batch`` sends a JSON-RPC batch (one HTTP request, one array of calls) and
  puts the answers back in the order asked (a node may answer in any order).
* Failover: the URLs are tried in turn; a connection error, a timeout, a 429 or a 5xx moves
  to the next URL (and the next request starts from the URL that last answered). Only when
  every URL failed does the call fail, with each URL's reason.
* Budget: at most ``requests_per_second`` HTTP requests per second per process (a batch is
  one request), spent on a ``limits`` moving window; a caller over budget waits.

An answer that carries a JSON-RPC ``error`` raises ``JsonRpcError`` at once: the node
answered, so another URL would not say otherwise.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any

import httpx
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter


class JsonRpcError(RuntimeError):
    """The node answered a call with an error object."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error}")
        self.error = error


class NodesUnavailable(ConnectionError):
    """No configured URL answered the request."""


class HttpxJsonRpc:
    """The ``JsonRpc`` port over HTTP (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        requests_per_second: float = 20.0,
        timeout: float = 10.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not urls:
            raise ValueError("at least one JSON-RPC URL is needed")
        self.urls = tuple(urls)
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = client is None
        self._preferred = 0
        self._ids = itertools.count(1)
        # A window of one second holding at most N requests (at least one).
        self._budget = RateLimitItemPerSecond(max(1, int(requests_per_second)))
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.requests = 0  # HTTP requests sent (failover retries included)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        request_id = next(self._ids)
        answer = await self._post(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        )
        return _result(method, answer)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        if not calls:
            return []
        first = next(self._ids)
        for _ in range(len(calls) - 1):
            next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + index, "method": method, "params": list(params)}
            for index, (method, params) in enumerate(calls)
        ]
        answers = await self._post(payload)
        if not isinstance(answers, list):  # a node refusing batches answers one error
            raise JsonRpcError(
                "batch", answers.get("error") if isinstance(answers, dict) else answers
            )
        by_id = {answer.get("id"): answer for answer in answers if isinstance(answer, dict)}
        results = []
        for index, (method, _params) in enumerate(calls):
            answer = by_id.get(first + index)
            if answer is None:
                raise JsonRpcError(method, "no answer in the batch")
            results.append(_result(method, answer))
        return results

    async def _spend(self) -> None:
        while not await self._limiter.hit(self._budget, "rpc"):
            stats = await self._limiter.get_window_stats(self._budget, "rpc")
            # reset_time: when the oldest request leaves the window (unix seconds).
            await asyncio.sleep(min(1.0, max(0.005, stats.reset_time - time.time())))

    async def _post(self, payload: Any) -> Any:
        failures: list[str] = []
        count = len(self.urls)
        for offset in range(count):
            index = (self._preferred + offset) % count
            url = self.urls[index]
            await self._spend()
            self.requests += 1
            try:
                response = await self._client.post(url, json=payload)
            except httpx.TransportError as error:
                failures.append(f"{url}: {type(error).__name__}")
                continue
            if response.status_code == 429 or response.status_code >= 500:
                failures.append(f"{url}: HTTP {response.status_code}")
                continue
            response.raise_for_status()
            self._preferred = index
            return response.json()
        raise NodesUnavailable("no JSON-RPC URL answered: " + "; ".join(failures))


def _result(method: str, answer: Any) -> Any:
    if not isinstance(answer, dict):
        raise JsonRpcError(method, f"not a JSON-RPC answer: {answer!r}")
    if answer.get("error") is not None:
        raise JsonRpcError(method, answer["error"])
    return answer.get("result")
