"""A connection holds few objects for the collector to scan (ADR 0054): no bound methods of
its transport, no empty containers while idle; and still delivers, coalesces and closes."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from types import MethodType

import pytest

from defi_realtime.application.realtime.outbox import Connection, Item


class Transport:
    """A sink as the lean transport is one: it writes, pings and closes for the connection."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.pings = 0
        self.closes: list[tuple[int, str]] = []

    def write_items(self, items: Sequence[Item]) -> None:
        self.written += [prefix + sid + suffix for prefix, sid, suffix, _ in items]

    def write_ping(self) -> None:
        self.pings += 1

    def close_from_hub(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))


def tracked_referents(connection: Connection) -> list[object]:
    return [o for o in gc.get_referents(connection) if gc.is_tracked(o)]


def test_an_idle_connection_holds_its_sink_and_no_bound_method_or_empty_container() -> None:
    sink = Transport()
    connection = Connection(None, sink=sink)
    other = Connection(None, sink=Transport())
    held = tracked_referents(connection)
    # Its class, its sink and the outbox every idle connection shares: nothing of its own.
    assert {id(o) for o in held} == {id(Connection), id(sink), id(other.outbox)}
    assert not any(isinstance(o, MethodType) for o in held)
    assert connection.pings
    connection.ping()
    assert sink.pings == 1


def test_messages_go_to_their_own_connection_and_the_idle_outbox_comes_back() -> None:
    first, second = Transport(), Transport()
    a, b = Connection(None, sink=first), Connection(None, sink=second)
    idle = a.outbox
    assert b.outbox is idle  # shared while nothing is queued
    a.offer(b"a1", b"", b"", None)
    b.offer(b"b1", b"", b"", None)
    assert first.written == [b"a1"]
    assert second.written == [b"b1"]
    assert a.outbox is idle
    assert b.outbox is idle
    assert len(idle) == 0
    a.pause()
    a.offer(b"a2", b"", b"", None)
    assert a.outbox is not idle
    assert len(idle) == 0
    a.resume()
    assert first.written == [b"a1", b"a2"]
    assert a.outbox is idle


def test_coalescing_still_replaces_queued_values() -> None:
    sink = Transport()
    connection = Connection(None, sink=sink, max_queue=4)
    connection.pause()
    for n in range(6):
        connection.offer(b"v%d" % n, b"s1", b"", "aave")
    connection.resume()
    # Past the high-water mark (2) the latest value of the key replaced the queued one.
    assert sink.written == [b"v0s1", b"v1s1", b"v5s1"]
    assert connection.coalesced == 3


def test_callables_still_work_and_shut_closes_through_them() -> None:
    closes: list[int] = []
    written: list[Sequence[Item]] = []
    connection = Connection(
        "owner", close=lambda code, reason: closes.append(code), write=written.append
    )
    assert not connection.pings  # no ping callable: the heartbeat skips it
    connection.offer_message(b"pong")
    assert [item[0] for batch in written for item in batch] == [b"pong"]
    connection.shut(4008, "slow")
    assert closes == [4008]


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"sink": Transport(), "close": lambda code, reason: None},
        {"sink": Transport(), "write": lambda items: None},
        {"write": lambda items: None},
    ],
)
def test_a_connection_needs_exactly_one_way_to_write(arguments: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"exactly one of|without a sink|a sink closes"):
        Connection(None, **arguments)  # type: ignore[arg-type]
