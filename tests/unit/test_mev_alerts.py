"""The ``mev`` alert condition: its validation, its measure, live evaluation of detections
the MEV follower records (real application on the in-memory store, real log) and backtests
over the history read model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.alert_backtest import backtest, history_points
from defi_realtime.application.evm_facts import ChainStep
from defi_realtime.application.mev_follower import MevFollower
from defi_realtime.domain.alert_rule import AlertRule, InvalidRule
from defi_realtime.domain.alert_values import (
    NO_MEV_MATCH,
    MevCondition,
    MevTarget,
    mev_measure,
    parse_condition,
    parse_target,
)
from defi_realtime.domain.evm import EvmChain
from tests.unit.test_alerting import WEBSOCKET, Harness
from tests.unit.test_mev import (
    ALICE,
    BOT,
    E6,
    E18,
    PAIR,
    PAIR2,
    TOKENS,
    USDC,
    WETH,
    sandwich_block,
    swap,
)

MEV_TARGET = {"chain_id": 1337}
SANDWICH = {
    "kind": "sandwich",
    "actor": BOT,
    "pool": PAIR,
    "pools": [PAIR],
    "profit_usd": 30.0,
}


@pytest.mark.parametrize(
    ("target", "condition", "message"),
    [
        ({"protocol": "aave"}, {"kind": "mev"}, "needs an MEV target"),
        (MEV_TARGET, {"kind": "threshold", "direction": "above", "value": 1}, "needs condition"),
        (MEV_TARGET, {"kind": "mev", "min_profit_usd": -1}, "condition.min_profit_usd must be"),
        (MEV_TARGET, {"kind": "mev", "pool": "0x12"}, "condition.pool does not match"),
        (MEV_TARGET, {"kind": "mev", "actor": 7}, "condition.actor must be a string"),
        (MEV_TARGET, {"kind": "mev", "detection": "frontrun"}, "condition.detection must be"),
        (MEV_TARGET, {"kind": "mev", "victim": BOT}, "condition.victim: unknown field"),
        ({"chain_id": 0}, {"kind": "mev"}, "target.chain_id must be greater than 0"),
        ({"chain_id": 1, "token": "coingecko:x"}, {"kind": "mev"}, "exactly one of"),
    ],
)
def test_a_bad_mev_rule_is_refused_naming_its_field(
    target: dict[str, Any], condition: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidRule) as refused:
        AlertRule.create("alice", target, condition, WEBSOCKET)
    assert message in str(refused.value)


def test_an_mev_rule_keeps_its_filters_with_addresses_in_lower_case() -> None:
    rule = AlertRule.create(
        "alice",
        MEV_TARGET,
        {"kind": "mev", "pool": PAIR.upper().replace("0X", "0x"), "detection": "sandwich"},
        WEBSOCKET,
    )
    assert rule.target == MevTarget(chain_id=1337)
    assert isinstance(rule.condition, MevCondition)
    assert (rule.condition.pool, rule.condition.min_profit_usd) == (PAIR, 0.0)
    with pytest.raises(InvalidRule, match=r"needs condition\.kind 'mev'"):
        rule.update(condition={"kind": "threshold", "direction": "above", "value": 1})


@pytest.mark.parametrize(
    ("condition", "measure"),
    [
        ({}, 30.0),
        ({"detection": "sandwich", "actor": BOT, "pool": PAIR}, 30.0),
        ({"detection": "arbitrage"}, NO_MEV_MATCH),
        ({"actor": ALICE}, NO_MEV_MATCH),
        ({"pool": PAIR2}, NO_MEV_MATCH),
    ],
)
def test_the_measure_is_the_usd_profit_of_a_matching_detection(
    condition: dict[str, Any], measure: float
) -> None:
    parsed = parse_condition({"kind": "mev", **condition})
    assert isinstance(parsed, MevCondition)
    assert mev_measure(parsed, SANDWICH) == measure


def test_an_arbitrage_matches_a_pool_filter_on_any_pool_it_went_through() -> None:
    parsed = parse_condition({"kind": "mev", "pool": PAIR2})
    assert isinstance(parsed, MevCondition)
    arbitrage = {"kind": "arbitrage", "actor": BOT, "pool": PAIR, "pools": [PAIR, PAIR2]}
    assert mev_measure(parsed, {**arbitrage, "profit_usd": None}) == 0.0  # not valued: 0
    assert mev_measure(parsed, None) == NO_MEV_MATCH  # a retraction


class MevHarness(Harness):
    """The alert harness with EVM blocks and the MEV follower recording what they hold."""

    def block(self, number: int, facts: list[dict[str, Any]]) -> None:
        parent = f"0xb{number - 1}" if number > 100 else "0x00"
        block = {"number": number, "hash": f"0xb{number}", "parent_hash": parent, "timestamp": 1}
        self.app.record_chain_step(ChainStep(1337, "evm:1337", blocks=[block], facts=facts))

    async def detect(self) -> None:
        async def record(steps: Any) -> int:
            return self.app.record_mev(steps)

        follower = MevFollower(self.log, self.mev_positions, record, {1337: TOKENS})
        await follower.runner().catch_up()

    def __init__(self) -> None:
        super().__init__()
        self.mev_positions = InMemoryPositionStore()
        self.app.record_chain_step(
            ChainStep(1337, "evm:1337", opening=lambda: EvmChain.open(1337, "Dev", 100))
        )


def victim_trade(block: int) -> list[dict[str, Any]]:
    return [swap(0, PAIR, ALICE, (USDC, E6), (WETH, E18 // 2000), block=block)]


async def test_a_sandwich_fires_a_matching_rule_once_and_the_next_detection_resolves_it() -> None:
    h = MevHarness()
    bot_rule = h.rule({"kind": "mev", "actor": BOT, "min_profit_usd": 10}, target=MEV_TARGET)
    big_rule = h.rule({"kind": "mev", "min_profit_usd": 1_000}, target=MEV_TARGET)
    arb_rule = h.rule({"kind": "mev", "detection": "arbitrage"}, target=MEV_TARGET)
    evaluator = h.evaluator()
    await evaluator.runner().catch_up()
    h.block(100, sandwich_block())
    await h.detect()
    await evaluator.runner().catch_up()
    [(kind, rule_id, measure, _)] = h.transitions()
    assert (kind, rule_id, measure) == ("alert_triggered", bot_rule, 30.0)
    # Another actor's sandwich: the bot's rule resolves, the others stay quiet.
    h.block(
        101,
        [
            swap(0, PAIR, ALICE, (USDC, 1_000 * E6), (WETH, E18 // 2), block=101),
            swap(1, PAIR, BOT, (USDC, 2_000 * E6), (WETH, 9 * E18 // 10), block=101),
            swap(2, PAIR, ALICE, (WETH, E18 // 2), (USDC, 1_020 * E6), block=101),
        ],
    )
    await h.detect()
    await evaluator.runner().catch_up()
    assert [(k, r, m) for k, r, m, _ in h.transitions()][1:] == [
        ("alert_resolved", bot_rule, NO_MEV_MATCH)
    ]
    assert big_rule not in {r for _, r, _, _ in h.transitions()}
    assert arb_rule not in {r for _, r, _, _ in h.transitions()}
    # Replayed from position 0 (a crash before the position was stored): nothing twice.
    again = h.evaluator(InMemoryPositionStore())
    await again.runner().catch_up()
    assert len(h.transitions()) == 2


async def test_a_reorg_retracting_the_detection_resolves_the_rule() -> None:
    h = MevHarness()
    rule_id = h.rule({"kind": "mev"}, target=MEV_TARGET)
    evaluator = h.evaluator()
    h.block(100, sandwich_block())
    await h.detect()
    h.app.record_chain_step(ChainStep(1337, "evm:1337", orphan_from=100))
    await h.detect()
    await evaluator.runner().catch_up()
    assert [(k, r) for k, r, _, _ in h.transitions()] == [
        ("alert_triggered", rule_id),
        ("alert_resolved", rule_id),
    ]


async def test_a_backtest_replays_the_live_detections_of_the_chain(tmp_path: Path) -> None:
    h = MevHarness()
    h.block(100, sandwich_block())
    h.block(101, victim_trade(101))
    h.block(102, [{**f, "block": 102, "block_hash": "0xb102"} for f in sandwich_block(1_100 * E6)])
    await h.detect()
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        assert model.apply(h.log.read(0, 1_000_000))
        target = parse_target(MEV_TARGET)
        condition = parse_condition({"kind": "mev", "min_profit_usd": 50})
        points = history_points(model, target, condition)
        assert [p.value for p in points] == [30.0, 100.0]
        result = backtest(target, condition, points, cooldown=0)
        assert [(e.state, e.measure) for e in result.events] == [("firing", 100.0)]
        other_chain = parse_target({"chain_id": 1})
        assert history_points(model, other_chain, condition) == []
    finally:
        model.close()
