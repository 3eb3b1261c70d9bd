"""The smart-money WebSocket channel: the ranking it streams by, the frames each filter
gets of a collector entry, and the hub routing them live and on replay (ADR 0051)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.realtime import Connection, RealtimeHub
from defi_realtime.application.realtime.frames import channel_of
from defi_realtime.application.realtime.protocol import (
    DEFAULT_TOP,
    FrameError,
    SmartMoneyFilter,
    Subscribe,
    parse,
)
from defi_realtime.application.realtime.smart_money import Leaders, SmartMoneyWatch
from defi_realtime.application.smart_money import WalletMove, moves_of
from defi_realtime.application.smart_money_reader import SmartMoneyReader
from defi_realtime.client import parse_frames
from defi_realtime.entrypoints.schemas import frames as server_frames
from tests.unit.test_mev import ALICE, BOB, BOT, E6, E18, PAIR, TOKENS, USDC, WETH, swap
from tests.unit.test_smart_money import CAROL, alice_and_bob, blocks

CHAIN = 1337
T0 = 1_765_000_000.0


class StoredMoves:
    """The history read model's wallet moves, as a list (``WalletMovesReadModel``)."""

    def __init__(self, moves: Sequence[WalletMove]) -> None:
        self.moves = list(moves)

    def wallet_moves(self, chain_id: int) -> list[WalletMove]:
        return [move for move in self.moves if move.chain_id == chain_id]


def watch_of(*ranked: str, chain: int = CHAIN, ranking: str = "default") -> SmartMoneyWatch:
    """A watch whose ranking is ``ranked`` (best first), as a refresh would leave it."""
    watch = SmartMoneyWatch(SmartMoneyReader(StoredMoves([]), {chain: TOKENS}))
    scores = [(wallet, 90.0 - place) for place, wallet in enumerate(ranked)]
    watch.update([Leaders.of(chain, ranking, T0, scores)])
    return watch


def recorded(position: int, *facts: dict[str, Any], chain: int = CHAIN) -> LogEntry:
    numbers = sorted({int(fact["block"]) for fact in facts})
    data = {"blocks": blocks(*numbers), "facts": list(facts)}
    return LogEntry(position, "evm_blocks_recorded", str(chain), data, T0)


def orphaned(position: int, *hashes: str) -> LogEntry:
    data = {"blocks": [{"number": 0, "hash": h} for h in hashes]}
    return LogEntry(position, "evm_blocks_orphaned", str(CHAIN), data, T0)


def trades_block(block: int = 110) -> LogEntry:
    """Alice, Bob and Carol trade in one block (in that order)."""
    return recorded(
        7,
        swap(0, PAIR, ALICE, (USDC, 100 * E6), (WETH, E18 // 10), block=block),
        swap(1, PAIR, BOB, (USDC, 200 * E6), (WETH, E18 // 5), block=block),
        swap(2, PAIR, CAROL, (WETH, E18 // 10), (USDC, 150 * E6), block=block),
    )


def frame_of(encoded: tuple[bytes, bytes] | None, sid: bytes = b"s1") -> dict[str, Any]:
    assert encoded is not None
    decoded: dict[str, Any] = json.loads(encoded[0] + sid + encoded[1])
    return decoded


def wallets(frame: dict[str, Any]) -> list[tuple[str, int]]:
    return [(trade["wallet"], trade["rank"]) for trade in frame["data"]["trades"]]


# -- the ranking ------------------------------------------------------------------------------


def test_a_refresh_ranks_as_the_route_does_and_keeps_the_top_only() -> None:
    moves = moves_of(CHAIN, blocks(100, 101, 102), alice_and_bob())
    reader = SmartMoneyReader(StoredMoves(moves), {CHAIN: TOKENS})
    watch = SmartMoneyWatch(reader, max_top=1, clock=lambda: T0)
    assert watch.serving
    assert watch.leaders(CHAIN, "default") is None
    watch.refresh()
    leaders = watch.leaders(CHAIN, "default")
    assert leaders is not None
    route = reader.rank(CHAIN, limit=1).wallets
    assert dict(leaders.places) == {ALICE: (1, pytest.approx(route[0].score))}
    assert route[0].features.wallet == ALICE
    assert (leaders.ranked_at, watch.refreshes) == (T0, 1)
    assert watch.leaders(CHAIN, "model") is None  # no model trained


def test_a_watch_without_a_chain_serves_nothing() -> None:
    assert not SmartMoneyWatch(None).serving
    assert not SmartMoneyWatch(SmartMoneyReader(StoredMoves([]), {})).serving


async def test_a_failed_refresh_keeps_the_previous_ranking() -> None:
    class Failing(StoredMoves):
        def wallet_moves(self, chain_id: int) -> list[WalletMove]:
            raise OSError("the store is down")

    watch = SmartMoneyWatch(SmartMoneyReader(Failing([]), {CHAIN: TOKENS}))
    watch.update([Leaders.of(CHAIN, "default", T0, [(ALICE, 50.0)])])

    task = asyncio.create_task(watch.run(0.01, offload=inline))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leaders = watch.leaders(CHAIN, "default")
    assert leaders is not None
    assert dict(leaders.places) == {ALICE: (1, 50.0)}


# -- frames -----------------------------------------------------------------------------------


def test_collector_entries_are_on_the_smart_money_channel() -> None:
    assert channel_of(trades_block()) == "smart-money"
    assert channel_of(orphaned(8, "0xb110")) == "smart-money"


def test_each_filter_gets_the_trades_of_its_top_in_chain_order() -> None:
    tape = watch_of(BOB, CAROL, ALICE).tape(trades_block())
    top_two = frame_of(tape.frame(SmartMoneyFilter(top=2)))
    assert wallets(top_two) == [(BOB, 1), (CAROL, 2)]
    assert top_two["type"] == top_two["channel"] == "smart-money"
    assert top_two["position"] == 7
    data = top_two["data"]
    assert (data["chainId"], data["retracted"], data["ranking"]) == (CHAIN, False, "default")
    assert data["rankedAt"] == T0
    bob = data["trades"][0]
    assert bob == {
        "wallet": BOB,
        "rank": 1,
        "score": 90.0,
        "block": 110,
        "blockHash": "0xb110",
        "timestamp": 10 * 3_600.0,
        "txHash": "0xt110-1",
        "logIndex": 0,
        "pool": PAIR,
        "tokenPaid": USDC,
        "amountPaid": str(200 * E6),
        "tokenGot": WETH,
        "amountGot": str(E18 // 5),
    }
    everyone = frame_of(tape.frame(SmartMoneyFilter(top=3)))
    assert wallets(everyone) == [(ALICE, 3), (BOB, 1), (CAROL, 2)]
    assert wallets(frame_of(tape.frame(None))) == wallets(everyone)  # default top 10


def test_a_wallet_filter_a_chain_filter_and_an_unranked_wallet() -> None:
    tape = watch_of(BOB, CAROL).tape(trades_block())
    assert wallets(frame_of(tape.frame(SmartMoneyFilter(wallet=CAROL)))) == [(CAROL, 2)]
    # Carol is second: not in a top 1, even when named.
    assert tape.frame(SmartMoneyFilter(top=1, wallet=CAROL)) is None
    # Alice traded but is not ranked: nothing of hers, ever.
    assert tape.frame(SmartMoneyFilter(wallet=ALICE)) is None
    assert tape.frame(SmartMoneyFilter(chain_id=CHAIN + 1)) is None
    assert tape.frame(SmartMoneyFilter(chain_id=CHAIN)) is not None
    assert tape.frame(SmartMoneyFilter(ranking="model")) is None  # no model ranking


def test_a_block_without_a_ranked_trade_sends_nothing_and_an_orphaning_goes_to_all() -> None:
    watch = watch_of(BOT)
    assert watch.tape(trades_block()).frame(SmartMoneyFilter()) is None
    tape = watch.tape(orphaned(9, "0xb110", "0xb111"))
    for wanted in (SmartMoneyFilter(), SmartMoneyFilter(top=1, wallet=ALICE)):
        frame = frame_of(tape.frame(wanted))
        assert frame["position"] == 9
        assert frame["data"] == {
            "chainId": CHAIN,
            "retracted": True,
            "blockHashes": ["0xb110", "0xb111"],
        }
    assert tape.frame(SmartMoneyFilter(chain_id=1)) is None


def test_one_encoding_per_filter_shared_by_its_subscribers() -> None:
    tape = watch_of(BOB, CAROL, ALICE).tape(trades_block())
    first = tape.frame(SmartMoneyFilter(top=2))
    assert tape.frame(SmartMoneyFilter(top=2)) is first
    assert tape.frame(SmartMoneyFilter(top=3)) is not first


def test_frames_are_valid_for_the_server_model_and_the_client() -> None:
    watch = watch_of(BOB, CAROL, ALICE)
    sent = [
        frame_of(watch.tape(trades_block()).frame(SmartMoneyFilter())),
        frame_of(watch.tape(orphaned(9, "0xb110")).frame(SmartMoneyFilter())),
    ]
    traded, retracted = (server_frames.SmartMoney.model_validate(f) for f in sent)
    assert traded.data.trades is not None
    assert [t.wallet for t in traded.data.trades] == [ALICE, BOB, CAROL]
    assert retracted.data.block_hashes == ["0xb110"]
    parsed = parse_frames(json.dumps(sent))
    assert [type(f).__name__ for f in parsed] == ["SmartMoney", "SmartMoney"]


# -- subscribing ------------------------------------------------------------------------------


def test_the_channel_takes_its_own_params_only() -> None:
    accepted = parse({"type": "subscribe", "channel": "smart-money"})
    assert isinstance(accepted, Subscribe)
    assert accepted.filter.smart_money == SmartMoneyFilter(top=DEFAULT_TOP)
    upper = "0x" + "AB" * 20
    named = parse(
        {
            "type": "subscribe",
            "channel": "smart-money",
            "params": {"top": 3, "wallet": upper, "chainId": 5, "ranking": "model"},
        }
    )
    assert isinstance(named, Subscribe)
    assert named.filter.smart_money == SmartMoneyFilter(3, upper.lower(), 5, "model")
    for refused in (
        {"channel": "smart-money", "params": {"protocolIds": ["aave"]}},
        {"channel": "smart-money", "params": {"top": 101}},
        {"channel": "smart-money", "params": {"wallet": "alice"}},
        {"channel": "smart-money", "snapshot": True},
        {"channel": "protocols", "params": {"top": 3}},
    ):
        with pytest.raises(FrameError):
            parse({"type": "subscribe", **refused})


# -- the hub ----------------------------------------------------------------------------------


class Log:
    """The event log the hub replays from."""

    def __init__(self, *entries: LogEntry) -> None:
        self.entries = entries

    def read(self, after: int, limit: int) -> LogBatch:
        found = tuple(e for e in self.entries if e.position > after)[:limit]
        return LogBatch(after=after, last=found[-1].position if found else after, entries=found)

    def head(self) -> int:
        return self.entries[-1].position if self.entries else 0


class Client:
    def __init__(self, hub: RealtimeHub) -> None:
        self.frames: list[dict[str, Any]] = []
        self.connection = Connection(None, close=lambda code, reason: None, write=self.write)
        hub.connect(self.connection)
        self.hub = hub

    def write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        self.frames.extend(json.loads(p + s + x) for p, s, x, _ in items)

    def subscribe(self, **fields: Any) -> None:
        message = {"type": "subscribe", "channel": "smart-money", **fields}
        self.hub.receive(self.connection, json.dumps(message))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] == kind]


async def inline(function: Any, *args: Any) -> Any:
    """Runs the hub's log reads in the event loop (no thread: the steps are the test's)."""
    return function(*args)


async def settle(hub: RealtimeHub) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    hub.flush()


async def test_the_hub_sends_each_subscriber_its_top_live() -> None:
    entries = (trades_block(), orphaned(8, "0xb110"))
    hub = RealtimeHub(Log(*entries), HotState(), smart_money=watch_of(BOB, CAROL, ALICE))  # type: ignore[arg-type]
    one, three, carol = Client(hub), Client(hub), Client(hub)
    one.subscribe(params={"top": 1})
    three.subscribe(params={"top": 3})
    carol.subscribe(params={"wallet": CAROL, "top": 1})
    await hub.deliver(LogBatch(after=6, last=8, entries=entries))
    await settle(hub)
    assert [wallets(f) for f in one.of("smart-money")[:1]] == [[(BOB, 1)]]
    assert [wallets(f) for f in three.of("smart-money")[:1]] == [[(ALICE, 3), (BOB, 1), (CAROL, 2)]]
    # Carol is second: a top 1 naming her gets only the orphaning.
    assert [f["data"]["retracted"] for f in carol.of("smart-money")] == [True]
    for client in (one, three):
        assert client.of("smart-money")[-1]["data"]["blockHashes"] == ["0xb110"]
    hub.close()


async def test_a_resume_gives_the_trades_after_since_by_the_ranking_of_now() -> None:
    entries = (
        recorded(3, swap(0, PAIR, ALICE, (USDC, 100 * E6), (WETH, E18 // 10), block=103)),
        recorded(4, swap(0, PAIR, BOB, (USDC, 100 * E6), (WETH, E18 // 10), block=104)),
        recorded(5, swap(0, PAIR, ALICE, (WETH, E18 // 10), (USDC, 120 * E6), block=105)),
    )
    watch = watch_of(BOB)
    hub = RealtimeHub(Log(*entries), HotState(), smart_money=watch, offload=inline)  # type: ignore[arg-type]
    await hub.seed(5)
    before = Client(hub)
    before.subscribe(params={"top": 1}, since=2)
    await settle(hub)
    assert [(f["position"], wallets(f)) for f in before.of("smart-money")] == [(4, [(BOB, 1)])]
    # Alice is first now: a resume replays her trades, as ranked now.
    watch.update([Leaders.of(CHAIN, "default", T0 + 60, [(ALICE, 95.0), (BOB, 80.0)])])
    after = Client(hub)
    after.subscribe(params={"top": 1}, since=2)
    await settle(hub)
    replayed = after.of("smart-money")
    assert [(f["position"], wallets(f)) for f in replayed] == [
        (3, [(ALICE, 1)]),
        (5, [(ALICE, 1)]),
    ]
    assert {f["data"]["rankedAt"] for f in replayed} == {T0 + 60}
    hub.close()


async def test_a_hub_that_ranks_nothing_refuses_the_channel() -> None:
    hub = RealtimeHub(Log(), HotState())  # type: ignore[arg-type]
    client = Client(hub)
    client.subscribe()
    await settle(hub)
    [error] = client.of("error")
    assert error["code"] == "invalid_channel"
    hub.close()
