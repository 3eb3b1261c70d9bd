"""The client's mirrors of the wire models (ADR 0027) name the same fields as the server's.

The client does not import the server's schemas (import-linter says so); this test is what
stops the two from drifting: a field added to, renamed in or removed from a server answer
or frame fails here until the client's mirror follows.
"""

from __future__ import annotations

import json
from typing import get_args

import pytest
from pydantic import BaseModel

from defi_realtime import client
from defi_realtime.application.realtime import CHANNELS
from defi_realtime.client import frames as client_frames
from defi_realtime.client import models as client_models
from defi_realtime.client.stream import Channel
from defi_realtime.entrypoints.schemas import alerts, ingest, protocols, realtime
from defi_realtime.entrypoints.schemas import frames as server_frames


def wire_names(model: type[BaseModel]) -> set[str]:
    """The JSON names of a model's fields (aliases where the model has them)."""
    return {field.alias or name for name, field in model.model_fields.items()}


PAIRS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (client_models.Protocol, protocols.Protocol),
    (client_models.ProtocolPage, protocols.ProtocolPage),
    (client_models.SeriesPoint, protocols.SeriesPoint),
    (client_models.MetricSeries, protocols.MetricSeries),
    (client_models.TvlEntry, realtime.TvlEntry),
    (client_models.VolumeEntry, realtime.VolumeEntry),
    (client_models.PriceEntry, realtime.PriceEntry),
    (client_models.Rejection, ingest.Rejection),
    (client_models.IngestResult, ingest.IngestResult),
    (client_models.Observation, ingest.Observation),
    (client_models.Price, ingest.Price),
    (client_models.AlertRule, alerts.AlertRule),
    (client_models.AlertRuleList, alerts.AlertRuleList),
    (client_models.PublicWebhookChannel, alerts.PublicWebhookChannel),
    (client_models.PublicEmailChannel, alerts.PublicEmailChannel),
    (client_models.PublicWebsocketChannel, alerts.PublicWebsocketChannel),
    (client_frames.Subscribed, server_frames.Subscribed),
    (client_frames.Unsubscribed, server_frames.Unsubscribed),
    (client_frames.Update, server_frames.Update),
    (client_frames.MetricData, server_frames.MetricData),
    (client_frames.PriceData, server_frames.PriceData),
    (client_frames.Alert, server_frames.Alert),
    (client_frames.AlertData, server_frames.AlertData),
    (client_frames.Anomaly, server_frames.Anomaly),
    (client_frames.AnomalyData, server_frames.AnomalyData),
    (client_frames.Mev, server_frames.Mev),
    (client_frames.MevData, server_frames.MevData),
    (client_frames.SmartMoney, server_frames.SmartMoney),
    (client_frames.SmartMoneyData, server_frames.SmartMoneyData),
    (client_frames.SmartMoneyTrade, server_frames.SmartMoneyTrade),
    (client_frames.Error, server_frames.Error),
    (client_frames.Pong, server_frames.Pong),
    (client_frames.Acked, server_frames.Acked),
]


@pytest.mark.parametrize(("mirror", "server"), PAIRS, ids=lambda m: m.__qualname__)
def test_the_mirror_names_the_same_fields(mirror: type[BaseModel], server: type[BaseModel]) -> None:
    assert wire_names(mirror) == wire_names(server)


def test_every_server_frame_has_a_mirror() -> None:
    mirrored = {server for _, server in PAIRS}
    assert set(server_frames.SERVER_MESSAGES.values()) <= mirrored


def test_the_client_parses_what_the_server_schema_accepts() -> None:
    """A frame valid for the server's model reads into the client's, batched or not."""
    update = {
        "type": "update",
        "subscriptionId": "s1",
        "channel": "protocols",
        "position": 7,
        "snapshot": True,
        "data": {
            "id": "aave-v3",
            "metric": "tvl",
            "chain": "total",
            "value": 1.5,
            "timestamp": 1.7e9,
            "change24h": None,
            "late": None,
        },
    }
    server_frames.Update.model_validate(update)
    pong = {"type": "pong", "position": 7, "newField": "ignored by the client"}
    [one] = client.parse_frames(json.dumps(update))
    assert isinstance(one, client.Update)
    assert (one.position, one.snapshot, one.key) == (7, True, ("aave-v3", "tvl", "total"))
    newer = {"type": "forecast", "position": 8}  # a frame type of a newer server: left out
    batch = client.parse_frames(json.dumps([update, newer, pong]))
    assert [type(frame) for frame in batch] == [client.Update, client.Pong]
    with pytest.raises(ValueError, match="position"):
        client.parse_frames(json.dumps({**update, "position": "seven"}))


def test_the_client_names_every_channel_the_server_serves() -> None:
    assert set(get_args(Channel)) == set(CHANNELS)
