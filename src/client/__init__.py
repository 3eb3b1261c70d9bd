"""A Python client of defi-realtime: the REST API and a resuming live stream.

::

    from defi_realtime.client import DefiRealtimeClient, Filters

    async with DefiRealtimeClient("http://127.0.0.1:8000", api_key) as client:
        page = await client.protocols(limit=10)
        async for update in client.stream("protocols", Filters(protocol_ids=["aave-v3"])):
            print(update.position, update.data.id, update.data.value)

Needs the ``client`` extra (``pip install 'defi-realtime[client]'``: httpx, websockets,
tenacity). It never imports the server's code (an import-linter contract): answers and
frames are mirrored here, alert rule values come from ``defi_realtime.domain`` (ADR 0027).
See ``docs/client.md``.
"""

from __future__ import annotations

from .errors import ApiError, ClientError, ResumeGapError, StreamError
from .frames import (
    Acked,
    Alert,
    AlertData,
    Error,
    MetricData,
    Pong,
    PriceData,
    ServerFrame,
    Subscribed,
    Unsubscribed,
    Update,
    parse_frames,
)
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
    PublicChannel,
    Rejection,
    SeriesPoint,
    TvlEntry,
    VolumeEntry,
)
from .rest import DefiRealtimeClient
from .stream import Channel, Filters, LiveStream, ReconnectPolicy, attach, stream

__all__ = [
    "Acked",
    "Alert",
    "AlertData",
    "AlertRule",
    "AlertRuleList",
    "ApiError",
    "Channel",
    "ClientError",
    "DefiRealtimeClient",
    "Error",
    "Filters",
    "IngestResult",
    "LiveStream",
    "MetricData",
    "MetricSeries",
    "Observation",
    "Pong",
    "Price",
    "PriceData",
    "PriceEntry",
    "Protocol",
    "ProtocolPage",
    "PublicChannel",
    "ReconnectPolicy",
    "Rejection",
    "ResumeGapError",
    "SeriesPoint",
    "ServerFrame",
    "StreamError",
    "Subscribed",
    "TvlEntry",
    "Unsubscribed",
    "Update",
    "VolumeEntry",
    "attach",
    "parse_frames",
    "stream",
]
