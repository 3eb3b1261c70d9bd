"""The node's ``HotState`` as a checkpoint body, and back: the one place that knows its fields.

``capture`` takes the state as of its position in the event loop: copies of the two dicts
of states, whose values are immutable (``ProtocolState`` and ``TokenState`` are frozen, and
``Points`` are never changed in place: ``record_point`` builds new ones), so encoding them
in a thread while the follower goes on is safe. ``encode`` / ``decode`` map each state to a
typed MessagePack record (float series as raw ``array('d')`` bytes: no per-point objects,
a memcpy each way) and back; ``install`` puts a decoded state into an empty ``HotState``,
views rendered as ``HotState.apply`` renders them.

A change of the states' shape changes ``_protocol_record`` / ``_protocol_state`` (and
the token pair) and bumps ``FORMAT_VERSION``: records of the old shape are then discarded
and the log replayed once (``checkpoints.Checkpointer.load``).
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from .checkpoints import ENCODER, Capture, Checkpointer
from .following import ProjectionRunner
from .hot_state import HotState, Points, ProtocolState, Reading, TokenState
from .log import LogBatch
from .ports import EventLog

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "CheckpointedHotState",
    "HotSnapshot",
    "capture",
    "decode",
    "encode",
    "install",
]

log = logging.getLogger(__name__)

KIND: Final = "hot_state"
FORMAT_VERSION: Final = 1


class _Series(msgspec.Struct, array_like=True, frozen=True):
    times: bytes
    values: bytes


class _Current(msgspec.Struct, array_like=True, frozen=True):
    metric: str
    chain: str
    value: float
    observed_at: float


class _Protocol(msgspec.Struct, array_like=True, frozen=True):
    slug: str
    name: str
    category: str
    chains: list[str]
    url: str
    oracles: list[str]
    position: int
    current: list[_Current]
    recent: _Series
    series: dict[str, _Series]


class _Token(msgspec.Struct, array_like=True, frozen=True):
    token: str
    price: float
    observed_at: float
    confidence: float | None
    position: int
    recent: _Series


class _Body(msgspec.Struct, array_like=True, frozen=True):
    protocols: list[_Protocol]
    tokens: list[_Token]


_DECODER: Final = msgspec.msgpack.Decoder(_Body)


@dataclass(frozen=True, slots=True)
class HotSnapshot:
    """The states of a ``HotState`` as of ``position``."""

    position: int
    protocols: dict[str, ProtocolState]
    tokens: dict[str, TokenState]


def snapshot(state: HotState) -> HotSnapshot:
    """The state's states as of now (O(number of protocols and tokens), no point copied)."""
    return HotSnapshot(state.position, dict(state.protocols), dict(state.tokens))


def capture(state: HotState) -> Callable[[], Capture | None]:
    """``Checkpointer.capture`` for ``state``: nothing before the first position."""

    def take() -> Capture | None:
        if state.position == 0:
            return None
        taken = snapshot(state)
        return Capture(taken.position, lambda: encode(taken))

    return take


def encode(taken: HotSnapshot) -> bytes:
    """The checkpoint body of ``taken`` (the position travels in the envelope)."""
    return ENCODER.encode(
        _Body(
            protocols=[_protocol_record(state) for state in taken.protocols.values()],
            tokens=[_token_record(state) for state in taken.tokens.values()],
        )
    )


def decode(position: int, body: bytes) -> HotSnapshot:
    """The snapshot a body holds (``msgspec.DecodeError`` / ``ValidationError`` when it is
    not one of this version)."""
    decoded = _DECODER.decode(body)
    protocols = {record.slug: _protocol_state(record) for record in decoded.protocols}
    tokens = {record.token: _token_state(record) for record in decoded.tokens}
    return HotSnapshot(position, protocols, tokens)


def install(state: HotState, taken: HotSnapshot) -> None:
    """Make an empty ``state`` what ``taken`` holds, views included."""
    if state.position != 0:
        raise ValueError(f"installing a checkpoint into a state at position {state.position}")
    state.protocols.update(taken.protocols)
    state.protocol_views.update(
        (slug, protocol.view(protocol.changes())) for slug, protocol in taken.protocols.items()
    )
    state.tokens.update(taken.tokens)
    state.price_views.update(
        (token, token_state.view(token_state.change_24h()))
        for token, token_state in taken.tokens.items()
    )
    state.position = taken.position


class CheckpointedHotState:
    """A ``HotState`` that starts from its checkpoint and writes new ones as it advances:
    ``position`` and ``apply`` for its ``ProjectionRunner`` (``runner``)."""

    def __init__(self, state: HotState, checkpointer: Checkpointer) -> None:
        self.state = state
        self.checkpointer = checkpointer
        checkpointer.capture = capture(state)
        self._restored = False

    def runner(self, event_log: EventLog, name: str) -> ProjectionRunner:
        return ProjectionRunner(name, event_log, self.position, self.apply)

    async def position(self) -> int:
        """The state's position; the first call loads the checkpoint into an empty state."""
        if not self._restored:
            self._restored = True
            await self.restore()
        return self.state.position

    async def restore(self) -> bool:
        """Load the checkpoint into the state, if it is empty and a usable one exists."""
        if self.state.position != 0:
            return False
        found = await self.checkpointer.load()
        if found is None:
            return False
        try:
            # Decoding and rendering the views take a while: off the event loop, into a
            # state of their own; taken over below without a suspension point.
            prepared = await asyncio.to_thread(_prepared, found.position, found.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("hot state checkpoint unusable, replaying the log: %s", error)
            return False
        if self.state.position != 0:
            return False  # applied meanwhile: never mix the two
        _take_over(self.state, prepared)
        log.info("hot state restored at position %d", prepared.position)
        return True

    async def apply(self, batch: LogBatch) -> bool:
        applied = self.state.apply(batch)
        if applied:
            self.checkpointer.advanced(self.state.position)
        return applied

    async def close(self) -> None:
        """Write the final checkpoint (a clean shutdown)."""
        await self.checkpointer.flush()


def _prepared(position: int, body: bytes) -> HotState:
    prepared = HotState()
    install(prepared, decode(position, body))
    return prepared


def _take_over(state: HotState, prepared: HotState) -> None:
    state.protocols.update(prepared.protocols)
    state.protocol_views.update(prepared.protocol_views)
    state.tokens.update(prepared.tokens)
    state.price_views.update(prepared.price_views)
    state.position = prepared.position


# -- the states' fields, each way (the only code that knows them) --------------------------


def _series_record(points: Points) -> _Series:
    return _Series(points.time_bytes, points.value_bytes)


def _points(record: _Series) -> Points:
    times, values = array("d"), array("d")
    times.frombytes(record.times)
    values.frombytes(record.values)
    if len(times) != len(values):
        raise msgspec.ValidationError("a series has as many times as values")
    return Points(times, values)


def _protocol_record(state: ProtocolState) -> _Protocol:
    return _Protocol(
        slug=state.slug,
        name=state.name,
        category=state.category,
        chains=list(state.chains),
        url=state.url,
        oracles=list(state.oracles),
        position=state.position,
        current=[
            _Current(metric, chain, reading.value, reading.observed_at)
            for (metric, chain), reading in state.current.items()
        ],
        recent=_series_record(state.recent),
        series={metric: _series_record(points) for metric, points in state.series.items()},
    )


def _protocol_state(record: _Protocol) -> ProtocolState:
    return ProtocolState(
        slug=record.slug,
        name=record.name,
        category=record.category,
        chains=tuple(record.chains),
        url=record.url,
        current={
            (item.metric, item.chain): Reading(item.value, item.observed_at)
            for item in record.current
        },
        recent=_points(record.recent),
        position=record.position,
        series={metric: _points(series) for metric, series in record.series.items()},
        oracles=tuple(record.oracles),
    )


def _token_record(state: TokenState) -> _Token:
    return _Token(
        token=state.token,
        price=state.price,
        observed_at=state.observed_at,
        confidence=state.confidence,
        position=state.position,
        recent=_series_record(state.recent),
    )


def _token_state(record: _Token) -> TokenState:
    return TokenState(
        token=record.token,
        price=record.price,
        observed_at=record.observed_at,
        confidence=record.confidence,
        recent=_points(record.recent),
        position=record.position,
    )
