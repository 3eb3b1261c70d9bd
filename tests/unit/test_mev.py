"""The MEV detector on hand-built blocks (each shape it finds and each look-alike it must
not), and the MevLedger aggregate (exactly once by position, retraction by block hash)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.evm_facts import ChainStep, TokenSpec
from defi_realtime.application.log import LogEntry
from defi_realtime.application.mev import detect, detect_block, trade_of
from defi_realtime.application.mev_follower import MevFollower, MevStep
from defi_realtime.application.realtime.frames import channel_of, encode
from defi_realtime.application.realtime.protocol import FrameError, Subscribe, parse
from defi_realtime.application.views import MevQuery
from defi_realtime.client.frames import parse_frames
from defi_realtime.domain.errors import DomainError
from defi_realtime.domain.evm import EvmChain
from defi_realtime.domain.mev import MevLedger
from defi_realtime.entrypoints.schemas import frames as server_frames
from defi_realtime.entrypoints.schemas.mev import MevList, MevQueryParams

USDC, WETH, DAI = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
PAIR, PAIR2, PAIR3 = "0x" + "aa" * 20, "0x" + "bb" * 20, "0x" + "cc" * 20
BOT, ALICE, BOB, ROUTER = "0x" + "0b" * 20, "0x" + "01" * 20, "0x" + "02" * 20, "0x" + "ee" * 20
TOKENS = {
    USDC: TokenSpec(USDC, "USDC", 6, usd=1.0),
    WETH: TokenSpec(WETH, "WETH", 18),
    DAI: TokenSpec(DAI, "DAI", 18, usd=1.0),
}
POOL_TOKENS = {PAIR: (USDC, WETH), PAIR2: (WETH, DAI), PAIR3: (DAI, USDC)}
E18, E6 = 10**18, 10**6


def swap(
    tx: int,
    pool: str,
    recipient: str,
    pay: tuple[str, int],
    get: tuple[str, int],
    *,
    log: int = 0,
    block: int = 100,
    tx_hash: str | None = None,
) -> dict[str, Any]:
    """A swap fact as the collector decodes it: ``recipient`` pays ``pay`` and gets ``get``."""
    token0, token1 = POOL_TOKENS[pool]
    amounts = {"amount0_in": 0, "amount1_in": 0, "amount0_out": 0, "amount1_out": 0}
    amounts["amount0_in" if pay[0] == token0 else "amount1_in"] = pay[1]
    amounts["amount0_out" if get[0] == token0 else "amount1_out"] = get[1]
    return {
        "kind": "swap",
        "block": block,
        "block_hash": f"0xb{block}",
        "tx_hash": tx_hash or f"0xt{block}-{tx}",
        "tx_index": tx,
        "log_index": log,
        "address": pool,
        "pool": pool,
        "protocol": "dex",
        "version": "v2",
        "sender": ROUTER,
        "recipient": recipient,
        "token0": token0,
        "token1": token1,
        **{k: str(v) for k, v in amounts.items()},
    }


def sandwich_block(back_usdc: int = 1_030 * E6) -> list[dict[str, Any]]:
    return [
        swap(0, PAIR, BOT, (USDC, 1_000 * E6), (WETH, E18 // 2)),
        swap(1, PAIR, ALICE, (USDC, 2_000 * E6), (WETH, 9 * E18 // 10)),
        swap(2, PAIR, BOT, (WETH, E18 // 2), (USDC, back_usdc)),
    ]


def test_a_sandwich_is_found_with_its_actor_victim_and_profit() -> None:
    [found] = detect_block(sandwich_block(), TOKENS)
    assert found.kind == "sandwich"
    assert (found.pool, found.actor, found.victim) == (PAIR, BOT, ALICE)
    assert found.quote_token == USDC
    assert found.profit == 30 * E6
    assert found.profit_quote == pytest.approx(30.0)
    assert found.profit_usd == pytest.approx(30.0)
    assert found.tx_hashes == ("0xt100-0", "0xt100-1", "0xt100-2")


def test_same_actor_around_a_victim_at_a_loss_is_not_a_sandwich() -> None:
    assert detect_block(sandwich_block(back_usdc=990 * E6), TOKENS) == []


def test_two_unrelated_traders_are_not_a_sandwich() -> None:
    block = sandwich_block()
    block[2] = swap(2, PAIR, BOB, (WETH, E18 // 2), (USDC, 1_030 * E6))
    assert detect_block(block, TOKENS) == []


def test_a_round_trip_with_no_victim_between_is_not_a_sandwich() -> None:
    block = sandwich_block()
    block[1] = swap(1, PAIR, ALICE, (WETH, E18), (USDC, 1_900 * E6))  # against the bot's way
    assert detect_block(block, TOKENS) == []
    assert detect_block([block[0], block[2]], TOKENS) == []


def test_a_back_run_in_the_next_block_is_not_a_sandwich() -> None:
    front, victim, back = sandwich_block()
    back = swap(0, PAIR, BOT, (WETH, E18 // 2), (USDC, 1_030 * E6), block=101)
    assert detect([front, victim, back], TOKENS) == []


def test_profit_counts_only_the_quantity_sold_back() -> None:
    front, victim, _ = sandwich_block()
    # sells back half the WETH bought for 520 USDC: 520 - 500 = 20 on the matched half.
    back = swap(2, PAIR, BOT, (WETH, E18 // 4), (USDC, 520 * E6))
    [found] = detect_block([front, victim, back], TOKENS)
    assert found.profit == 20 * E6


def test_an_unpriced_quote_token_is_valued_through_the_trade() -> None:
    block = [
        swap(0, PAIR, BOT, (WETH, E18), (USDC, 2_000 * E6)),
        swap(1, PAIR, ALICE, (WETH, 5 * E18), (USDC, 9_000 * E6)),
        swap(2, PAIR, BOT, (USDC, 2_000 * E6), (WETH, 11 * E18 // 10)),
    ]
    [found] = detect_block(block, TOKENS)
    assert found.quote_token == WETH
    assert found.profit_quote == pytest.approx(0.1)
    # 2,000 USDC bought 1.1 WETH in the back-run: 0.1 WETH = 181.8 USD.
    assert found.profit_usd == pytest.approx(0.1 * 2_000 / 1.1)


def test_a_cyclic_arbitrage_in_one_transaction() -> None:
    tx = "0xarb"
    block = [
        swap(3, PAIR, PAIR2, (USDC, 1_000 * E6), (WETH, E18 // 2), log=0, tx_hash=tx),
        swap(3, PAIR2, PAIR3, (WETH, E18 // 2), (DAI, 1_010 * E18), log=1, tx_hash=tx),
        swap(3, PAIR3, BOT, (DAI, 1_010 * E18), (USDC, 1_008 * E6), log=2, tx_hash=tx),
    ]
    [found] = detect_block(block, TOKENS)
    assert (found.kind, found.actor, found.victim) == ("arbitrage", BOT, None)
    assert found.pools == (PAIR, PAIR2, PAIR3)
    assert found.profit == 8 * E6
    assert found.profit_usd == pytest.approx(8.0)


def test_a_route_that_is_no_cycle_or_a_losing_cycle_is_not_arbitrage() -> None:
    tx = "0xroute"
    route = [
        swap(3, PAIR, PAIR2, (USDC, 1_000 * E6), (WETH, E18 // 2), log=0, tx_hash=tx),
        swap(3, PAIR2, ALICE, (WETH, E18 // 2), (DAI, 1_010 * E18), log=1, tx_hash=tx),
    ]
    assert detect_block(route, TOKENS) == []
    losing = [
        *route,
        swap(3, PAIR3, ALICE, (DAI, 1_010 * E18), (USDC, 990 * E6), log=2, tx_hash=tx),
    ]
    assert detect_block(losing, TOKENS) == []


def test_a_swap_that_is_not_one_token_in_one_out_is_no_trade() -> None:
    flash = swap(0, PAIR, BOT, (USDC, E6), (WETH, E18))
    flash["amount1_in"] = str(E18)  # pays back the WETH it took: net nothing in token1
    assert trade_of(flash) is None


def test_the_ledger_records_once_by_position_and_retracts_by_block() -> None:
    ledger = MevLedger.open(1337)
    found = [f.to_json() for f in detect_block(sandwich_block(), TOKENS)]
    assert ledger.detect(found, position=10)
    assert not ledger.detect(found, position=10)  # a replay of the same entry
    assert not ledger.detect([], position=11)
    assert ledger.detections == 1
    assert ledger.retract(["0xb999"]) == []
    assert ledger.retract(["0xb100"]) == [found[0]["key"]]
    assert ledger.retract(["0xb100"]) == []  # retracted once
    kinds = [type(e).__name__ for e in ledger.collect_events()]
    assert kinds == ["Opened", "MevDetected", "MevRetracted"]


def test_the_ledger_refuses_a_detection_without_profit() -> None:
    ledger = MevLedger.open(1337)
    [found] = [f.to_json() for f in detect_block(sandwich_block(), TOKENS)]
    with pytest.raises(DomainError):
        ledger.detect([{**found, "profit": "0"}], position=1)
    with pytest.raises(DomainError):
        ledger.detect([{**found, "kind": "liquidation"}], position=1)
    assert ledger.detections == 0


@given(
    front=st.integers(1, 10**9),
    bought=st.integers(1, 10**9),
    sold=st.integers(1, 10**9),
    proceeds=st.integers(1, 10**9),
)
def test_a_sandwich_is_reported_exactly_when_the_matched_round_trip_gains(
    front: int, bought: int, sold: int, proceeds: int
) -> None:
    block = [
        swap(0, PAIR, BOT, (USDC, front), (WETH, bought)),
        swap(1, PAIR, ALICE, (USDC, 5), (WETH, 1)),
        swap(2, PAIR, BOT, (WETH, sold), (USDC, proceeds)),
    ]
    found = detect_block(block, TOKENS)
    # the matched quantity times (sale price - purchase price), at least one raw unit.
    matched = min(bought, sold)
    gains = Fraction(matched * proceeds, sold) - Fraction(matched * front, bought) >= 1
    assert [f.kind for f in found] == (["sandwich"] if gains else [])
    assert all(f.profit >= 0 for f in found)


# --- the follower, over a real (in-memory) event store -------------------------------------


class Chain:
    """An application whose collector records blocks (as ``record_chain_step`` does) and a
    MEV follower over its log."""

    def __init__(self) -> None:
        self.app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.log = EventStoreLog(self.app)
        self.positions = InMemoryPositionStore()
        self.app.record_chain_step(
            ChainStep(1337, "evm:1337", opening=lambda: EvmChain.open(1337, "Dev", 100))
        )

    def block(self, number: int, facts: list[dict[str, Any]]) -> None:
        parent = f"0xb{number - 1}" if number > 100 else "0x00"
        block = {"number": number, "hash": f"0xb{number}", "parent_hash": parent, "timestamp": 1}
        self.app.record_chain_step(ChainStep(1337, "evm:1337", blocks=[block], facts=facts))

    def orphan(self, from_number: int) -> None:
        self.app.record_chain_step(ChainStep(1337, "evm:1337", orphan_from=from_number))

    async def record(self, steps: Sequence[MevStep]) -> int:
        return self.app.record_mev(steps)

    def follower(self, positions: InMemoryPositionStore | None = None) -> MevFollower:
        return MevFollower(self.log, positions or self.positions, self.record, {1337: TOKENS})

    def entries(self, kind: str) -> list[LogEntry]:
        return [e for e in self.log.read(0, 1_000_000).entries if e.kind == kind]


async def test_the_follower_records_a_sandwich_once_and_a_reorg_retracts_it() -> None:
    chain = Chain()
    chain.block(100, sandwich_block())
    chain.block(101, [swap(0, PAIR, ALICE, (USDC, E6), (WETH, E18 // 2000), block=101)])
    follower = chain.follower()
    await follower.runner().catch_up()
    [found] = chain.entries("mev_detected")
    assert found.key == "1337"
    assert (found.data["kind"], found.data["actor"], found.data["victim"]) == (
        "sandwich",
        BOT,
        ALICE,
    )
    assert found.data["profit"] == str(30 * E6)
    assert found.data["profit_usd"] == 30.0
    # A rebuild from position 0 (another position store) finds it again, records nothing.
    rebuilt = chain.follower(InMemoryPositionStore())
    await rebuilt.runner().catch_up()
    assert rebuilt.recorded == 0
    assert len(chain.entries("mev_detected")) == 1
    chain.orphan(100)
    await follower.runner().catch_up()
    [retracted] = chain.entries("mev_retracted")
    assert retracted.data["keys"] == [found.data["key"]]
    assert retracted.data["block_hashes"] == ["0xb100"]
    await chain.follower(InMemoryPositionStore()).runner().catch_up()  # replayed: no more
    assert len(chain.entries("mev_retracted")) == 1


async def test_a_crash_between_recording_and_the_position_records_nothing_twice() -> None:
    chain = Chain()
    chain.block(100, sandwich_block())

    class Crash(Exception):
        pass

    class FailingSave(InMemoryPositionStore):
        async def save(self, name: str, position: int) -> None:
            raise Crash

    with pytest.raises(Crash):
        await chain.follower(FailingSave()).apply(chain.log.read(0, 1_000))
    assert len(chain.entries("mev_detected")) == 1
    follower = chain.follower()
    await follower.runner().catch_up()
    assert follower.recorded == 0
    assert len(chain.entries("mev_detected")) == 1


async def test_the_history_read_model_lists_live_detections_with_totals(tmp_path: Path) -> None:
    chain = Chain()
    chain.block(100, sandwich_block())
    tx = "0xarb"
    chain.block(
        101,
        [
            swap(
                3, PAIR, PAIR2, (USDC, 1_000 * E6), (WETH, E18 // 2), log=0, block=101, tx_hash=tx
            ),
            swap(
                3, PAIR2, PAIR3, (WETH, E18 // 2), (DAI, 1_010 * E18), log=1, block=101, tx_hash=tx
            ),
            swap(
                3, PAIR3, BOT, (DAI, 1_010 * E18), (USDC, 1_008 * E6), log=2, block=101, tx_hash=tx
            ),
        ],
    )
    await chain.follower().runner().catch_up()
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        assert model.apply(chain.log.read(0, 1_000_000))
        found, totals = model.mev(MevQuery())
        assert [(v.kind, v.block) for v in found] == [("arbitrage", 101), ("sandwich", 100)]
        assert (totals.detections, totals.sandwiches, totals.arbitrages) == (2, 1, 1)
        assert totals.profit_usd == pytest.approx(38.0)
        answer = MevList.model_validate(
            {"detections": [v.to_json() for v in found], "totals": totals.to_json()}
        ).model_dump(by_alias=True)
        assert answer["detections"][1]["victim"] == ALICE
        assert answer["detections"][1]["txHashes"] == ["0xt100-0", "0xt100-1", "0xt100-2"]
        only_pool, pool_totals = model.mev(MevQuery(pool=PAIR, from_block=100, to_block=100))
        assert [v.kind for v in only_pool] == ["sandwich"]
        assert pool_totals.detections == 1
        assert model.mev(MevQuery(actor=ALICE))[1].detections == 0
        # A reorg orphans block 101: the arbitrage leaves the read model.
        chain.orphan(101)
        await chain.follower().runner().catch_up()
        assert model.apply(chain.log.read(model.position(), 1_000_000))
        found, totals = model.mev(MevQuery())
        assert [v.kind for v in found] == ["sandwich"]
        assert totals.profit_usd == pytest.approx(30.0)
    finally:
        model.close()


@pytest.mark.parametrize(
    "params",
    [
        {"pool": "0x12"},
        {"actor": "alice"},
        {"fromBlock": "-1"},
        {"fromBlock": "9", "toBlock": "3"},
        {"limit": "0"},
        {"kind": "liquidation"},
        {"chain": "1"},
    ],
)
def test_bad_mev_queries_are_refused(params: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        MevQueryParams.model_validate(params)


def test_a_mev_query_takes_addresses_in_any_case() -> None:
    query = MevQueryParams.model_validate(
        {"pool": PAIR.upper().replace("0X", "0x"), "toBlock": "7"}
    )
    assert (query.pool, query.to_block, query.limit) == (PAIR, 7, 100)


async def test_detections_and_retractions_are_mev_frames_of_the_frame_models() -> None:
    chain = Chain()
    chain.block(100, sandwich_block())
    chain.orphan(100)
    await chain.follower().runner().catch_up()
    entries = chain.entries("mev_detected") + chain.entries("mev_retracted")
    frames = []
    for entry in entries:
        assert channel_of(entry) == "mev"
        prefix, suffix = encode(entry, "mev", None)
        frames.append(json.loads(prefix + b"sub-1" + suffix))
    detected, retracted = (server_frames.Mev.model_validate(f) for f in frames)
    assert detected.data.retracted is False
    assert (detected.data.actor, detected.data.victim) == (BOT, ALICE)
    assert detected.data.profit_usd == pytest.approx(30.0)
    assert retracted.data.retracted is True
    assert retracted.data.keys == [detected.data.key]
    assert [type(f).__name__ for f in parse_frames(json.dumps(frames))] == ["Mev", "Mev"]


def test_the_mev_channel_takes_no_filters() -> None:
    accepted = parse({"type": "subscribe", "channel": "mev"})
    assert isinstance(accepted, Subscribe)
    assert accepted.channel == "mev"
    for extra in ({"params": {"protocolIds": ["aave"]}}, {"snapshot": True}):
        with pytest.raises(FrameError):
            parse({"type": "subscribe", "channel": "mev", **extra})
