"""The anomaly detector as a checkpoint body, and back.

The detector changes its series in place, so ``capture`` copies every series' state in the
event loop (``AnomalyDetector.dump``: a few floats and a ring of ``window`` returns each);
encoding runs in a thread. The body names the ``DetectorSettings`` it was folded with: a
detector folded under other settings is discarded (the follower folds the log again), as
is a body of another ``FORMAT_VERSION``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Final

import msgspec

from .anomaly import AnomalyDetector, DetectorSettings, SeriesDump
from .checkpoints import ENCODER, Capture

__all__ = ["FORMAT_VERSION", "KIND", "decode", "encode", "snapshot"]

KIND: Final = "anomaly_detector"
FORMAT_VERSION: Final = 1


class _Series(msgspec.Struct, array_like=True, frozen=True):
    name: str
    last_at: float
    last_value: float
    count: int
    cursor: int
    numbers: bytes


class _Body(msgspec.Struct, array_like=True, frozen=True):
    settings: dict[str, str | int | float]
    observations: int
    series: list[_Series]


_DECODER: Final = msgspec.msgpack.Decoder(_Body)


def snapshot(detector: AnomalyDetector, position: int) -> Capture:
    """The detector as of ``position``, copied now, encoded later."""
    series = detector.dump()
    settings = detector.settings
    observations = detector.observations
    return Capture(position, lambda: encode(settings, observations, series))


def encode(settings: DetectorSettings, observations: int, series: dict[str, SeriesDump]) -> bytes:
    return ENCODER.encode(
        _Body(
            settings=asdict(settings),
            observations=observations,
            series=[
                _Series(name, d.last_at, d.last_value, d.count, d.cursor, d.numbers)
                for name, d in series.items()
            ],
        )
    )


def decode(settings: DetectorSettings, body: bytes) -> AnomalyDetector | None:
    """The detector a body holds; None when it was folded under other settings
    (``msgspec`` errors or ``ValueError`` when it is not a body of this version)."""
    decoded = _DECODER.decode(body)
    if decoded.settings != asdict(settings):
        return None
    return AnomalyDetector.restore(
        settings,
        {
            item.name: SeriesDump(
                item.last_at, item.last_value, item.count, item.cursor, item.numbers
            )
            for item in decoded.series
        },
        decoded.observations,
    )
