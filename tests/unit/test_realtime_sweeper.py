"""The hub's sweeper (heartbeats, idle timeout) must not hold the event loop for long."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from defi_realtime.application.hot_state import HotState
from defi_realtime.application.realtime import Connection, RealtimeHub
from defi_realtime.application.realtime import hub as hub_module


async def test_heartbeats_to_many_connections_are_spread_over_loop_turns() -> None:
    hub = RealtimeHub(event_log=Any, state=HotState())  # type: ignore[arg-type]  # not used
    turn = 0
    pings_per_turn: Counter[int] = Counter()
    clients = 3 * hub_module.SWEEP_SLICE + 17

    all_pinged = asyncio.Event()

    def ping() -> None:
        pings_per_turn[turn] += 1
        if sum(pings_per_turn.values()) == clients:
            all_pinged.set()

    for _ in range(clients):
        connection = Connection(
            "owner", close=lambda code, reason: None, write=lambda items: None, ping=ping
        )
        connection.last_ping = 0.0  # every one of them is due
        hub.connect(connection)

    async def count_turns() -> None:
        nonlocal turn
        while True:
            turn += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    sweeper = asyncio.create_task(hub.run_sweeper(idle_timeout=600, heartbeat_interval=60))
    try:
        await asyncio.wait_for(all_pinged.wait(), 10)
        await asyncio.sleep(0.05)  # no second ping before the interval
    finally:
        sweeper.cancel()
        counter.cancel()
    assert sum(pings_per_turn.values()) == clients  # each due connection pinged once
    assert max(pings_per_turn.values()) <= hub_module.SWEEP_SLICE
    assert len(pings_per_turn) >= 4


def test_the_next_ping_is_due_a_little_early_so_sockets_opened_together_drift_apart() -> None:
    hub = RealtimeHub(event_log=Any, state=HotState())  # type: ignore[arg-type]
    connections = [
        Connection(
            "owner", close=lambda code, reason: None, write=lambda items: None, ping=lambda: None
        )
        for _ in range(200)
    ]
    now = time.monotonic()
    for connection in connections:
        connection.last_ping = 0.0
    hub.sweep(now, idle_timeout=600, heartbeat_interval=20, connections=connections)
    due = {round(connection.last_ping, 6) for connection in connections}
    assert all(now - 20 * hub_module.PING_JITTER <= at <= now for at in due)
    assert len(due) > 100  # not all in the same sweep next time
