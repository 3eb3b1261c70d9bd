"""``DefiRealtimeClient``: the REST API over httpx, answers as typed values."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeVar
from uuid import UUID

import httpx
from pydantic import BaseModel, TypeAdapter

from ..domain.alert_values import Channel, RuleTarget
from ..domain.alert_values import Condition as RuleCondition
from ..domain.observations import TOTAL, Metric
from .errors import ApiError
from .models import (
    AlertRule,
    AlertRuleList,
    IngestResult,
    MetricSeries,
    Observation,
    Price,
    PriceEntry,
    Protocol,
    ProtocolPage,
    TvlEntry,
    VolumeEntry,
)
from .stream import Channel as StreamChannel
from .stream import Filters, LiveStream, ReconnectPolicy, attach, stream

__all__ = ["DefiRealtimeClient"]

M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT: Final = 10.0
_TVL_LIST: Final = TypeAdapter(list[TvlEntry])
_VOLUME_LIST: Final = TypeAdapter(list[VolumeEntry])
_PRICE_LIST: Final = TypeAdapter(list[PriceEntry])


def _time(value: float | datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else repr(float(value))


def _query(**params: Any) -> dict[str, str]:
    """Query parameters: None left out, lists comma-separated, booleans as the API spells
    them."""
    query: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            query[name] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            query[name] = ",".join(str(item) for item in value)
        else:
            query[name] = str(value)
    return query


def _raise_for_error(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") or {}
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:500], {}
    raise ApiError(response.status_code, code, message, details)


class DefiRealtimeClient:
    """An async client of one defi-realtime server.

    ``base_url`` is the server's root (``http://127.0.0.1:8000``); ``api_key`` is sent as
    ``X-API-Key`` on every request and on the WebSocket handshake (writes, alerts and the
    ``alerts`` channel need one; reads may too, depending on the server). Use it as an
    async context manager, or call :meth:`aclose`. Errors are raised as :class:`ApiError`.
    ``http`` lets a caller bring its own ``httpx.AsyncClient`` (the client does not close
    one it did not make).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        headers = {"X-API-Key": api_key} if api_key else {}
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, headers=headers
        )
        if http is not None and api_key:
            self._http.headers.update(headers)

    async def __aenter__(self) -> DefiRealtimeClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool (if this client made it)."""
        if self._owns_http:
            await self._http.aclose()

    # -- plumbing -------------------------------------------------------------------------

    async def _get(self, path: str, model: type[M], **params: Any) -> M:
        response = await self._http.get(path, params=_query(**params))
        _raise_for_error(response)
        return model.model_validate_json(response.content)

    async def _send(self, method: str, path: str, model: type[M], body: Any = None) -> M:
        response = await self._http.request(method, path, json=body)
        _raise_for_error(response)
        return model.model_validate_json(response.content)

    # -- protocols ------------------------------------------------------------------------

    async def protocols(
        self,
        *,
        chain: str | None = None,
        category: str | None = None,
        min_tvl: float | None = None,
        sort: str = "tvl",
        order: Literal["asc", "desc"] = "desc",
        limit: int = 100,
        offset: int = 0,
        as_of: float | datetime | None = None,
    ) -> ProtocolPage:
        """One page of the protocol listing (``GET /v2/protocols``)."""
        return await self._get(
            "/v2/protocols",
            ProtocolPage,
            chain=chain,
            category=category,
            min_tvl=min_tvl,
            sort=sort,
            order=order,
            limit=limit,
            offset=offset,
            asOf=_time(as_of),
        )

    async def all_protocols(
        self, *, page_size: int = 500, **filters: Any
    ) -> AsyncIterator[Protocol]:
        """Every protocol matching ``filters`` (as :meth:`protocols`), page after page."""
        offset = 0
        while True:
            page = await self.protocols(limit=page_size, offset=offset, **filters)
            for protocol in page.protocols:
                yield protocol
            offset += len(page.protocols)
            if not page.protocols or offset >= page.total:
                return

    async def protocol(self, slug: str, *, as_of: float | datetime | None = None) -> Protocol:
        """One protocol (``GET /v2/protocols/{slug}``); :class:`ApiError` 404 if unknown."""
        return await self._get(f"/v2/protocols/{slug}", Protocol, asOf=_time(as_of))

    async def metrics(
        self,
        slug: str,
        *,
        metric: Metric = "tvl",
        chain: str = TOTAL,
        start: float | datetime | None = None,
        end: float | datetime | None = None,
        bucket: str | int | None = None,
        limit: int | None = None,
    ) -> MetricSeries:
        """A metric's time series, raw or bucketed (``5m`` ... ``1w`` or seconds)."""
        return await self._get(
            f"/v2/protocols/{slug}/metrics",
            MetricSeries,
            metric=metric,
            chain=chain,
            start=_time(start),
            end=_time(end),
            bucket=bucket,
            limit=limit,
        )

    # -- realtime snapshots ---------------------------------------------------------------

    async def realtime_tvl(
        self, protocol_ids: Sequence[str] | None = None, *, limit: int | None = None
    ) -> list[TvlEntry]:
        """The latest total TVL of the named protocols (or the top ``limit``)."""
        response = await self._http.get(
            "/v2/realtime/tvl", params=_query(protocolIds=protocol_ids, limit=limit)
        )
        _raise_for_error(response)
        return _TVL_LIST.validate_python(response.json()["data"])

    async def realtime_volumes(
        self, protocol_ids: Sequence[str] | None = None, *, limit: int | None = None
    ) -> list[VolumeEntry]:
        """The latest 24 h volume and fees of the named protocols (or the top ``limit``)."""
        response = await self._http.get(
            "/v2/realtime/volumes", params=_query(protocolIds=protocol_ids, limit=limit)
        )
        _raise_for_error(response)
        return _VOLUME_LIST.validate_python(response.json()["data"])

    async def realtime_prices(
        self, tokens: Sequence[str] | None = None, *, limit: int | None = None
    ) -> list[PriceEntry]:
        """The latest prices of the named tokens (or the ``limit`` most recent)."""
        response = await self._http.get(
            "/v2/realtime/prices", params=_query(tokens=tokens, limit=limit)
        )
        _raise_for_error(response)
        return _PRICE_LIST.validate_python(response.json()["data"])

    # -- writes ---------------------------------------------------------------------------

    async def ingest(
        self,
        observations: Iterable[Observation] = (),
        prices: Iterable[Price] = (),
        *,
        partial: bool = False,
    ) -> IngestResult:
        """Record a batch (``POST /v2/ingest``; needs a key). A batch with a rejected item
        commits nothing unless ``partial``; then :class:`ApiError` 422 ``invalid_items``
        carries the result in its details."""
        body: dict[str, Any] = {"partial": partial}
        items = [item.model_dump(mode="json", exclude_none=True) for item in observations]
        if items:
            body["observations"] = items
        price_items = [item.model_dump(mode="json", exclude_none=True) for item in prices]
        if price_items:
            body["prices"] = price_items
        return await self._send("POST", "/v2/ingest", IngestResult, body)

    # -- alerts ---------------------------------------------------------------------------

    async def create_alert(
        self,
        target: RuleTarget,
        condition: RuleCondition,
        channels: Sequence[Channel],
        *,
        name: str = "",
        cooldown: int | None = None,
    ) -> AlertRule:
        """Create an alert rule owned by the key's account."""
        body: dict[str, Any] = {
            "name": name,
            "target": target.model_dump(mode="json"),
            "condition": condition.model_dump(mode="json"),
            "channels": [c.model_dump(mode="json", exclude_none=True) for c in channels],
        }
        if cooldown is not None:
            body["cooldown"] = cooldown
        return await self._send("POST", "/v2/alerts", AlertRule, body)

    async def alerts(self) -> AlertRuleList:
        """The account's alert rules."""
        return await self._get("/v2/alerts", AlertRuleList)

    async def alert(self, rule_id: UUID | str) -> AlertRule:
        """One of the account's alert rules; :class:`ApiError` 404 if not one of them."""
        return await self._get(f"/v2/alerts/{rule_id}", AlertRule)

    async def pause_alert(self, rule_id: UUID | str) -> AlertRule:
        return await self._send("POST", f"/v2/alerts/{rule_id}/pause", AlertRule)

    async def resume_alert(self, rule_id: UUID | str) -> AlertRule:
        return await self._send("POST", f"/v2/alerts/{rule_id}/resume", AlertRule)

    async def delete_alert(self, rule_id: UUID | str) -> None:
        """Delete a rule (it stops being evaluated)."""
        response = await self._http.delete(f"/v2/alerts/{rule_id}")
        _raise_for_error(response)

    # -- the live stream ------------------------------------------------------------------

    def stream(
        self,
        channel: StreamChannel,
        filters: Filters | None = None,
        *,
        snapshot: bool = True,
        since: int | None = None,
        reconnect: ReconnectPolicy | None = None,
    ) -> LiveStream:
        """The server's live updates on ``channel``, resumed across disconnects: see
        :func:`defi_realtime.client.stream`."""
        return stream(
            self.ws_url,
            channel,
            filters,
            api_key=self.api_key,
            snapshot=snapshot,
            since=since,
            reconnect=reconnect,
        )

    def attach(self, subscription: str, *, reconnect: ReconnectPolicy | None = None) -> LiveStream:
        """A durable subscription's updates after its acknowledged position, then live:
        see :func:`defi_realtime.client.attach` (needs the client's API key)."""
        if self.api_key is None:
            raise ValueError("attaching to a durable subscription needs an API key")
        return attach(self.ws_url, subscription, api_key=self.api_key, reconnect=reconnect)

    @property
    def ws_url(self) -> str:
        """The WebSocket endpoint of the same server."""
        scheme, _, rest = self.base_url.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v2/realtime"
