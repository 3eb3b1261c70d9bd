"""Server frames: how a log entry (or a current value) becomes an ``update`` or ``alert``.

An update is encoded once per log entry, split around the subscription id into a prefix and
a suffix, so that fan-out to many subscribers costs no JSON encoding per subscriber.

Facts: a live update's ``change24h`` and ``late`` are those of its entry's position, read
from the node's hot state right after it applied the entry (``EntryFacts``): the 24 h change
of the entry's own series (TVL, volume, fees or price), and whether the observation is older
than the current value (``late: true``: history arriving late; the value shown as current
did not move). Updates read back from the log (``since``, or a client catching up after it
fell behind) carry ``change24h: null`` and ``late: null``: those facts as of a past position
are not kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from ...domain.observations import TOTAL, VOLUME_METRICS
from ..hot_state import EntryFacts, ProtocolState, TokenState
from ..log import EVM_KINDS, LogEntry
from .protocol import SMART_MONEY, dumps

ALERT_KINDS: Final = frozenset({"alert_triggered", "alert_resolved"})
ANOMALY_KIND: Final = "anomaly_detected"
MEV_KINDS: Final = frozenset({"mev_detected", "mev_retracted"})
_UPDATE: Final = b'{"type":"update","subscriptionId":"'
_ALERT: Final = b'{"type":"alert","subscriptionId":"'
_ANOMALY: Final = b'{"type":"anomaly","subscriptionId":"'
_MEV: Final = b'{"type":"mev","subscriptionId":"'

Encoded = tuple[bytes, bytes]
"""A frame split around the subscription id: ``prefix + id + suffix``."""


def channel_of(entry: LogEntry) -> str | None:
    if entry.kind == "metric":
        return metric_channel(str(entry.data.get("metric")))
    if entry.kind == "price":
        return "prices"
    if entry.kind in ALERT_KINDS:
        return "alerts" if to_sockets(entry) else None
    if entry.kind == ANOMALY_KIND:
        return "anomalies"
    if entry.kind in MEV_KINDS:
        return "mev"
    if entry.kind in EVM_KINDS:
        # What EVM collectors record: a frame per subscriber's filter, never through
        # ``encode`` (realtime/smart_money.py).
        return SMART_MONEY
    return None


def to_sockets(entry: LogEntry) -> bool:
    """Whether an alert transition goes to its owner's ``alerts`` sockets: only when its
    rule has a ``websocket`` channel. A transition recorded before transitions named their
    channels did go to the sockets, and replays as it was (docs/adr/0037)."""
    kinds = entry.data.get("channel_kinds")
    return kinds is None or "websocket" in kinds


def metric_channel(metric: str) -> str:
    """``volumes`` for the 24 h flows; ``protocols`` for the TVL and its sections."""
    return "volumes" if metric in VOLUME_METRICS else "protocols"


def value_key(entry: LogEntry) -> str:
    """Which value an update is of: a newer update of the same value may replace it."""
    if entry.kind == "metric":
        return _metric_key(entry.key, str(entry.data.get("metric")), str(entry.data.get("chain")))
    return entry.key


def _metric_key(slug: str, metric: str, chain: str) -> str:
    return f"{slug}\x00{metric}\x00{chain}"


def _update(channel: str, position: int, payload: dict[str, Any], snapshot: bool) -> Encoded:
    body: dict[str, Any] = {"channel": channel, "position": position, "data": payload}
    if snapshot:
        body["snapshot"] = True
    return _UPDATE, b'",' + dumps(body)[1:]


def encode(entry: LogEntry, channel: str, facts: EntryFacts | None) -> Encoded:
    """An entry's frame; ``facts`` None: read back from the log (no facts known)."""
    data = entry.data
    if channel == "alerts":
        body = {
            "alertId": entry.key,
            "condition": "firing" if entry.kind == "alert_triggered" else "resolved",
            "data": {"measure": data.get("measure"), "idempotencyKey": data.get("idempotency_key")},
            "timestamp": data.get("observed_at"),
            "position": entry.position,
        }
        return _ALERT, b'",' + dumps(body)[1:]
    if channel == "anomalies":
        body = {
            "channel": channel,
            "position": entry.position,
            "data": {
                "id": entry.key,
                "series": data.get("series"),
                "measure": data.get("measure"),
                "value": data.get("value"),
                "timestamp": data.get("observed_at"),
                "score": data.get("score"),
                "direction": data.get("direction"),
                "reason": data.get("reason"),
            },
        }
        return _ANOMALY, b'",' + dumps(body)[1:]
    if channel == "mev":
        return _MEV, b'",' + dumps(_mev_body(entry))[1:]
    change = None if facts is None else facts.change_24h(entry)
    late = None if facts is None else not facts.current
    if channel == "prices":
        payload: dict[str, Any] = {
            "id": entry.key,
            "value": data.get("price"),
            "timestamp": data.get("observed_at"),
            "confidence": data.get("confidence"),
            "change24h": change,
            "late": late,
        }
    else:
        payload = {
            "id": entry.key,
            "metric": data.get("metric"),
            "chain": data.get("chain"),
            "value": data.get("value"),
            "timestamp": data.get("observed_at"),
            "change24h": change,
            "late": late,
        }
    return _update(channel, entry.position, payload, snapshot=False)


def _mev_body(entry: LogEntry) -> dict[str, Any]:
    """A detection (``retracted: false``), or the keys a reorg retracted (ADR 0050)."""
    data = entry.data
    if entry.kind == "mev_retracted":
        payload: dict[str, Any] = {
            "chainId": int(entry.key),
            "retracted": True,
            "keys": data.get("keys"),
            "blockHashes": data.get("block_hashes"),
        }
    else:
        payload = {
            "chainId": int(entry.key),
            "retracted": False,
            "key": data.get("key"),
            "kind": data.get("kind"),
            "block": data.get("block"),
            "blockHash": data.get("block_hash"),
            "pool": data.get("pool"),
            "actor": data.get("actor"),
            "victim": data.get("victim"),
            "quoteToken": data.get("quote_token"),
            "profit": data.get("profit"),
            "profitQuote": data.get("profit_quote"),
            "profitUsd": data.get("profit_usd"),
            "txHashes": data.get("tx_hashes"),
        }
    return {"channel": "mev", "position": entry.position, "data": payload}


def protocol_snapshot(
    state: ProtocolState, channel: str, position: int
) -> Iterator[tuple[str, str, Encoded]]:
    """The current values of a protocol on ``channel`` as frames at ``position``:
    ``(chain, value key, frame)`` per ``(metric, chain)``."""
    for (metric, chain), reading in sorted(state.current.items()):
        if metric_channel(metric) != channel:
            continue
        payload = {
            "id": state.slug,
            "metric": metric,
            "chain": chain,
            "value": reading.value,
            "timestamp": reading.observed_at,
            "change24h": state.change_24h(metric, reading.value, reading.observed_at)
            if chain == TOTAL
            else None,
            "late": False,
        }
        yield (
            chain,
            _metric_key(state.slug, metric, chain),
            _update(channel, position, payload, snapshot=True),
        )


def price_snapshot(state: TokenState, position: int) -> Encoded:
    payload = {
        "id": state.token,
        "value": state.price,
        "timestamp": state.observed_at,
        "confidence": state.confidence,
        "change24h": state.change_24h(),
        "late": False,
    }
    return _update("prices", position, payload, snapshot=True)
