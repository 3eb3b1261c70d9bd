"""A trading-bot style consumer: stream protocols' TVL, act when one drains.

It subscribes with ``defi_realtime.client`` (a snapshot of the current TVL, then every
change, resumed by itself across disconnects and server restarts), keeps each protocol's
total TVL over a sliding window of data time, and emits a ``sell`` signal when the TVL has
fallen ``--drop`` percent or more below the window's peak: the kind of reaction a bot
would have to a protocol being drained. Signals are printed as JSON lines (a real bot
would place an order); after one, the protocol's window starts afresh so the same fall is
not signalled twice.

    pip install 'defi-realtime[client]'
    python examples/trading_bot.py --url http://127.0.0.1:8000 --protocol aave-v3 --drop 10

``--max-signals`` and ``--timeout`` bound a run (tests, demos).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from defi_realtime.client import (
    DefiRealtimeClient,
    Filters,
    MetricData,
    ReconnectPolicy,
    Update,
)


@dataclass(frozen=True)
class Signal:
    """What the bot decided, and why."""

    action: str
    protocol: str
    tvl: float
    peak: float
    drop_pct: float
    position: int


@dataclass
class DrainWatch:
    """A protocol's recent total TVL, by data time, and the fall from its peak."""

    window: float
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, timestamp: float, value: float) -> tuple[float, float]:
        """Record a value; returns (peak over the window, fall from it in percent)."""
        self.points.append((timestamp, value))
        while self.points and self.points[0][0] < timestamp - self.window:
            self.points.popleft()
        peak = max(v for _, v in self.points)
        drop = 0.0 if peak <= 0 else (peak - value) / peak * 100
        return peak, drop


class TradingBot:
    """Reacts to TVL updates: a ``sell`` signal when a protocol's TVL drains."""

    def __init__(self, drop_pct: float, window: float) -> None:
        self.drop_pct = drop_pct
        self.window = window
        self.watches: dict[str, DrainWatch] = {}

    def on_update(self, update: Update) -> Signal | None:
        data = update.data
        # Only a protocol's total, and only values that became current (``late`` is true
        # for history arriving out of order: not news for a trader).
        if not isinstance(data, MetricData) or data.chain != "total" or data.late:
            return None
        watch = self.watches.setdefault(data.id, DrainWatch(self.window))
        peak, drop = watch.add(data.timestamp, data.value)
        if drop < self.drop_pct:
            return None
        self.watches[data.id] = DrainWatch(self.window)  # start afresh after acting
        watch = self.watches[data.id]
        watch.add(data.timestamp, data.value)
        return Signal("sell", data.id, data.value, peak, round(drop, 4), update.position)


async def run(
    url: str,
    api_key: str | None,
    protocols: Sequence[str],
    *,
    drop_pct: float,
    window: float,
    max_signals: int | None = None,
) -> int:
    bot = TradingBot(drop_pct, window)
    signals = 0
    policy = ReconnectPolicy(initial_delay=0.2, max_delay=5.0, give_up_after=None)
    async with DefiRealtimeClient(url, api_key) as client:
        # A REST look first, so that the bot starts with names and current values ...
        for slug in protocols:
            protocol = await client.protocol(slug)
            print(json.dumps({"watching": slug, "name": protocol.name, "tvl": protocol.tvl}))
        # ... then the stream: a snapshot of the same values, then every change.
        filters = Filters(protocol_ids=list(protocols)) if protocols else None
        async with client.stream("protocols", filters, reconnect=policy) as updates:
            async for update in updates:
                if not isinstance(update, Update):
                    continue
                if update.snapshot and not bot.watches:
                    print(json.dumps({"streaming": True}), flush=True)
                signal = bot.on_update(update)
                if signal is None:
                    continue
                print(json.dumps(signal.__dict__), flush=True)
                signals += 1
                if max_signals is not None and signals >= max_signals:
                    break
    return signals


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--api-key", default=None, help="X-API-Key (if reads need one)")
    parser.add_argument("--protocol", action="append", default=[], help="slug (repeatable)")
    parser.add_argument("--drop", type=float, default=10.0, help="percent below the peak")
    parser.add_argument("--window", type=float, default=3600.0, help="seconds of data time")
    parser.add_argument("--max-signals", type=int, default=None, help="stop after N signals")
    parser.add_argument("--timeout", type=float, default=None, help="stop after N seconds")
    args = parser.parse_args(argv)

    async def bounded() -> int:
        async with asyncio.timeout(args.timeout):
            return await run(
                args.url,
                args.api_key,
                args.protocol,
                drop_pct=args.drop,
                window=args.window,
                max_signals=args.max_signals,
            )

    try:
        asyncio.run(bounded())
    except TimeoutError:
        print(json.dumps({"timeout": args.timeout}), flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
