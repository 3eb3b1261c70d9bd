"""``stream()``: a subscription to ``/v2/realtime`` that survives disconnects by itself.

The server's guarantee (``docs/websocket.md``): every update carries the event store's
global position, one position per update; a ``subscribe`` with ``since=N`` replays every
matching update after N in order, then goes on live, with no gap and no duplicate. The
client's part is to remember the last position it handed out and to reconnect with it:

- first connection: ``snapshot: true`` (the current value of every matching series, all
  at the snapshot's position P, then live updates after P), or ``since`` if the caller
  gives one, or live only;
- after a dropped connection or a server restart: wait (bounded exponential backoff with
  jitter, ``tenacity``), reconnect, and subscribe with ``since=<last position>``;
- a drop before any update after the snapshot: whether the snapshot was complete is not
  known (the protocol has no end-of-snapshot frame), so the client asks for a new snapshot
  and hands out only the values it has not already handed out: the caller's picture ends
  up equal to the new snapshot's, and no value is repeated;
- a frame at or below the last position is never handed out twice.

What cannot be resumed is raised, never skipped: :class:`ResumeGapError` when the server
cannot replay from the position (``recovered: false``, ``invalid_since``), and
:class:`StreamError` for a refused key or origin, a refused subscription, or a server that
stays unreachable longer than the policy allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias

import tenacity
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .errors import ResumeGapError, StreamError
from .frames import Alert, Error, ServerFrame, Subscribed, Update, parse_frames

__all__ = ["Channel", "Filters", "LiveStream", "ReconnectPolicy", "attach", "stream"]

Channel: TypeAlias = Literal[
    "protocols", "prices", "volumes", "alerts", "anomalies", "mev", "smart-money"
]

# Close codes after which reconnecting cannot help (docs/websocket.md): a refused key or
# origin. Everything else (1001 restart, 1006 dropped, 4000 idle, 4008 slow consumer,
# 4029 too many connections for now...) is retried.
_FATAL_CLOSE_CODES: Final = {4001: "invalid or missing API key", 4003: "origin refused"}
# Handshake answers that retrying cannot fix.
_FATAL_STATUS: Final = {400, 401, 403, 404}
# Error codes in answer to a subscribe that are worth another try later.
_RETRY_CODES: Final = {"too_many_replays", "replay_failed"}
_GAP_CODES: Final = {"invalid_since"}
# A durable subscription that was deleted while attached: nothing more will come.
_ENDED_CODES: Final = {"subscription_closed"}
MAX_FRAME: Final = 16 * 1024 * 1024


@dataclass(frozen=True)
class Filters:
    """A subscription's ``params``: every condition given must hold."""

    protocol_ids: Sequence[str] | None = None
    token_ids: Sequence[str] | None = None
    chains: Sequence[str] | None = None
    categories: Sequence[str] | None = None
    min_tvl: float | None = None

    def params(self) -> dict[str, Any]:
        """The ``params`` object of a ``subscribe`` frame."""
        named = {
            "protocolIds": self.protocol_ids,
            "tokenIds": self.token_ids,
            "chains": self.chains,
            "categories": self.categories,
        }
        params: dict[str, Any] = {name: list(v) for name, v in named.items() if v is not None}
        if self.min_tvl is not None:
            params["minTvl"] = self.min_tvl
        return params


@dataclass(frozen=True)
class ReconnectPolicy:
    """How long to wait between reconnection attempts, and for how long to keep trying.

    Delays grow exponentially from ``initial_delay`` to at most ``max_delay`` seconds, with
    random jitter (so that the clients of a restarted server do not all come back at the
    same instant). ``give_up_after`` seconds without a working connection raise
    :class:`StreamError`; None keeps trying forever. A connection that was working resets
    the count.
    """

    initial_delay: float = 0.1
    max_delay: float = 10.0
    give_up_after: float | None = 300.0
    open_timeout: float = 10.0
    # Sent as {"type": "ping"} after this long without a frame, so that a quiet stream
    # stays alive behind any transport (the ASGI one does not see protocol-level pongs).
    heartbeat: float = 30.0

    def retrying(self) -> tenacity.AsyncRetrying:
        """A tenacity controller for one outage."""
        stop: tenacity.stop.stop_base = (
            tenacity.stop_never
            if self.give_up_after is None
            else tenacity.stop_after_delay(self.give_up_after)
        )
        return tenacity.AsyncRetrying(
            wait=tenacity.wait_exponential(multiplier=self.initial_delay, max=self.max_delay)
            + tenacity.wait_random(0, self.initial_delay),
            stop=stop,
            retry=tenacity.retry_if_exception_type(_Retry),
            reraise=False,
        )


class _Retry(Exception):
    """A failure that another connection may not have (the server is down, restarting,
    busy)."""


def _closed(error: ConnectionClosed) -> Exception:
    """What a closed connection means: try again, or give up (a refused key or origin)."""
    code = error.rcvd.code if error.rcvd is not None else None
    if code in _FATAL_CLOSE_CODES:
        return StreamError(f"closed by the server: {_FATAL_CLOSE_CODES[code]}", code=code)
    return _Retry(f"connection closed ({code})")


class LiveStream:
    """An async iterator of :class:`Update` (or :class:`Alert`) frames, resumed across
    disconnects; see the module's docstring. ``position`` is the last log position handed
    out: store it, and a later ``stream(..., since=position)`` starts right after it.

    Use it with ``async for`` and close it (``aclose()``, or ``async with``) when done; a
    stream that another task is iterating is closed by cancelling that task (an async
    generator cannot be closed while it runs).
    """

    def __init__(
        self,
        url: str,
        channel: Channel | None,
        filters: Filters | None = None,
        *,
        api_key: str | None = None,
        snapshot: bool = True,
        since: int | None = None,
        reconnect: ReconnectPolicy | None = None,
        subscription: str | None = None,
    ) -> None:
        if channel == "alerts" or since is not None or subscription is not None:
            # Alerts are events, not values; `since` and a durable subscription resume.
            snapshot = False
        self.subscription = subscription
        """A durable subscription's id: (re)connections attach to it (see ``attach``)."""
        self._socket: ClientConnection | None = None
        self.url = url
        self.channel = channel
        self.filters = filters or Filters()
        self.api_key = api_key
        self.snapshot = snapshot
        self.policy = reconnect or ReconnectPolicy()
        self.position: int | None = since
        """The last log position handed out (None before the first live update)."""
        self.reconnects = 0
        """How many times the stream reconnected (for logs and tests)."""
        # The snapshot under way: the values handed out since it began, while no update
        # after it has been seen (a new snapshot after a drop skips these).
        self._snapshot_values: dict[tuple[str, str, str], tuple[float, float]] = {}
        self._request_ids = itertools.count(1)
        self._frames = self._run()

    # -- the iterator protocol ------------------------------------------------------------

    def __aiter__(self) -> LiveStream:
        return self

    async def __anext__(self) -> Update | Alert:
        return await anext(self._frames)

    async def aclose(self) -> None:
        """Close the connection; the iteration ends."""
        await self._frames.aclose()

    async def __aenter__(self) -> LiveStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- connections ----------------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[Update | Alert, None]:
        first = True
        while True:
            if not first:
                # A short, jittered pause even before the first retry: a server that
                # drops every new session at once must not be hammered in a tight loop.
                delay = self.policy.initial_delay * random.uniform(0.5, 1.5)
                await asyncio.sleep(delay)
                self.reconnects += 1
            first = False
            socket, pending = await self._open()
            self._socket = socket
            try:
                for frame in pending:
                    if (out := self._accept(frame)) is not None:
                        yield out
                while True:
                    try:
                        frames = await self._receive(socket)
                    except _Retry:
                        break
                    for frame in frames:
                        if (out := self._accept(frame)) is not None:
                            yield out
            finally:
                self._socket = None
                await socket.close()

    async def ack(self, position: int | None = None) -> bool:
        """Acknowledge a durable subscription's updates up to ``position`` (default: the
        last one handed out): a later ``attach`` resumes after it, in this process or
        another. False when there was nothing to acknowledge or no connection (the next
        ``ack`` covers it; until one is stored, what followed the last stored one comes
        again, and this stream still hands out nothing twice)."""
        if self.subscription is None:
            raise StreamError("ack is for durable subscriptions (attach)", code="not_durable")
        position = self.position if position is None else position
        socket = self._socket
        if position is None or socket is None:
            return False
        frame = {"type": "ack", "subscriptionId": self.subscription, "position": position}
        try:
            await socket.send(json.dumps(frame))
        except ConnectionClosed:
            return False
        return True

    async def _open(self) -> tuple[ClientConnection, list[ServerFrame]]:
        """Connect and subscribe, retrying with backoff; the frames that came with the
        ``subscribed`` reply are returned, to be handed out first."""
        try:
            async for attempt in self.policy.retrying():
                with attempt:
                    return await self._connect_and_subscribe()
        except tenacity.RetryError as error:
            cause = error.last_attempt.exception()
            raise StreamError(
                f"{self.url} unreachable for {self.policy.give_up_after}s: {cause}"
            ) from cause
        raise AssertionError("unreachable")  # pragma: no cover - tenacity returns or raises

    async def _connect_and_subscribe(self) -> tuple[ClientConnection, list[ServerFrame]]:
        headers = {"X-API-Key": self.api_key} if self.api_key else None
        try:
            socket = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.policy.open_timeout,
                compression=None,
                max_size=MAX_FRAME,
            )
        except InvalidStatus as error:
            status = error.response.status_code
            if status in _FATAL_STATUS:
                raise StreamError(f"handshake refused: HTTP {status}", code=status) from error
            raise _Retry(f"handshake answered HTTP {status}") from error
        except (OSError, TimeoutError, InvalidHandshake) as error:
            raise _Retry(str(error)) from error
        try:
            request_id = f"resume-{next(self._request_ids)}"
            try:
                await socket.send(json.dumps(self._subscribe_frame(request_id)))
            except ConnectionClosed as error:  # e.g. a refused key: 4001 right away
                raise _closed(error) from error
            while True:
                frames = await self._receive(socket)
                for index, frame in enumerate(frames):
                    if isinstance(frame, Error) and frame.id == request_id:
                        self._refused(frame)
                    if isinstance(frame, Subscribed) and frame.id == request_id:
                        self._subscribed(frame)
                        return socket, frames[index + 1 :]
        except BaseException:
            await socket.close()
            raise

    def _subscribe_frame(self, request_id: str) -> dict[str, Any]:
        if self.subscription is not None:
            # The server keeps the channel, the filter and the position to resume after.
            return {"type": "attach", "subscription": self.subscription, "id": request_id}
        frame: dict[str, Any] = {
            "type": "subscribe",
            "channel": self.channel,
            "params": self.filters.params(),
            "id": request_id,
        }
        if self.position is not None:
            frame["since"] = self.position
        elif self.snapshot:
            # The first snapshot, or a new one after a drop that may have cut it short.
            frame["snapshot"] = True
        return frame

    def _subscribed(self, frame: Subscribed) -> None:
        if not frame.recovered:
            raise ResumeGapError(
                f"the server cannot replay everything after position {self.position}",
                code="not_recovered",
            )
        if self.subscription is not None:
            # Attached: what follows is after the acknowledged position (the first time;
            # later, what this stream handed out already is skipped).
            if self.position is None:
                self.position = frame.acknowledged
        elif self.position is None and not self.snapshot:
            # Live only: the updates that follow are all after the hub's position now.
            self.position = frame.position

    def _refused(self, frame: Error) -> None:
        if frame.code in _RETRY_CODES:
            raise _Retry(f"{frame.code}: {frame.message}")
        if frame.code in _GAP_CODES:
            raise ResumeGapError(f"{frame.code}: {frame.message}", code=frame.code)
        raise StreamError(f"subscribe refused: {frame.code}: {frame.message}", code=frame.code)

    async def _receive(self, socket: ClientConnection) -> list[ServerFrame]:
        """The next message(s); a heartbeat ping when the line is quiet; ``_Retry`` when the
        connection is gone (or the server dropped the subscription)."""
        while True:
            try:
                async with asyncio.timeout(self.policy.heartbeat):
                    text = await socket.recv()
            except TimeoutError:
                with contextlib.suppress(ConnectionClosed):
                    await socket.send('{"type":"ping"}')
                continue
            except ConnectionClosed as error:
                raise _closed(error) from error
            frames = parse_frames(text)
            for frame in frames:
                if isinstance(frame, Error) and frame.code in _RETRY_CODES:
                    raise _Retry(f"{frame.code}: {frame.message}")
                if isinstance(frame, Error) and frame.code in _ENDED_CODES:
                    raise StreamError(f"{frame.code}: {frame.message}", code=frame.code)
            return frames

    # -- resuming -------------------------------------------------------------------------

    def _accept(self, frame: ServerFrame) -> Update | Alert | None:
        """The frame to hand out, or None for one that is not news."""
        if isinstance(frame, Update) and frame.snapshot:
            value = (frame.data.value, frame.data.timestamp)
            if self._snapshot_values.get(frame.key) == value:
                return None  # handed out before the drop, unchanged since
            self._snapshot_values[frame.key] = value
            return frame
        if isinstance(frame, Update | Alert):
            if self.position is not None and frame.position <= self.position:
                return None
            self.position = frame.position
            self._snapshot_values.clear()
            return frame
        return None


def stream(
    url: str,
    channel: Channel,
    filters: Filters | None = None,
    *,
    api_key: str | None = None,
    snapshot: bool = True,
    since: int | None = None,
    reconnect: ReconnectPolicy | None = None,
) -> LiveStream:
    """Subscribe to ``channel`` at ``url`` (``ws://host:port/v2/realtime``) and iterate
    over its updates, resumed across disconnects and server restarts with no gap and no
    duplicate.

    ``snapshot`` (default): begin with the current value of every matching series
    (``Update.snapshot`` true), then live updates. ``since``: begin right after that log
    position instead (a position stored from ``LiveStream.position``).
    """
    return LiveStream(
        url,
        channel,
        filters,
        api_key=api_key,
        snapshot=snapshot,
        since=since,
        reconnect=reconnect,
    )


def attach(
    url: str,
    subscription: str,
    *,
    api_key: str,
    reconnect: ReconnectPolicy | None = None,
) -> LiveStream:
    """Attach to a durable subscription (``POST /v2/subscriptions``) at ``url`` and iterate
    over its updates: every matching update after its acknowledged position, then live,
    re-attached across disconnects. Call ``LiveStream.ack()`` once updates are processed:
    the next ``attach`` (here or in another process) resumes after them.
    """
    return LiveStream(url, None, api_key=api_key, reconnect=reconnect, subscription=subscription)
