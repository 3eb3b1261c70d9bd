"""Smart money: wallet moves from collector facts, features (PnL, win rate, holding time,
early entries), the default ranking, the user's model (scikit-learn trained, JSON kept,
scored in Python) and the history read model's wallet moves with reorgs."""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.evm_facts import ChainStep, TokenSpec
from defi_realtime.application.smart_money import (
    FEATURE_NAMES,
    WalletFeatures,
    WalletMove,
    default_score,
    moves_of,
    wallet_features,
)
from defi_realtime.application.smart_money_model import (
    SmartMoneyModel,
    TrainingRefused,
    load_model,
    model_inputs,
    read_labels,
    save_model,
    train,
)
from defi_realtime.application.smart_money_reader import (
    NoModel,
    SmartMoneyReader,
    UnknownChain,
)
from tests.unit.test_mev import ALICE, BOB, E6, E18, PAIR, ROUTER, TOKENS, USDC, WETH, Chain, swap

CAROL = "0x" + "03" * 20
HOUR = 3_600.0


def blocks(*numbers: int) -> list[dict[str, Any]]:
    return [{"number": n, "hash": f"0xb{n}", "timestamp": (n - 100) * HOUR} for n in numbers]


def transfer(block: int, sender: str, recipient: str, token: str, amount: int) -> dict[str, Any]:
    return {
        "kind": "transfer",
        "block": block,
        "block_hash": f"0xb{block}",
        "tx_hash": f"0xtransfer{block}",
        "tx_index": 9,
        "log_index": 9,
        "address": token,
        "token": token,
        "sender": sender,
        "recipient": recipient,
        "amount": str(amount),
    }


def alice_and_bob() -> list[dict[str, Any]]:
    """Alice buys 1 WETH at 1,000, Bob at 1,500, Alice sells half at 2,000."""
    return [
        swap(0, PAIR, ALICE, (USDC, 1_000 * E6), (WETH, E18), block=100),
        swap(0, PAIR, BOB, (USDC, 1_500 * E6), (WETH, E18), block=101),
        swap(0, PAIR, ALICE, (WETH, E18 // 2), (USDC, 1_000 * E6), block=102),
    ]


def test_a_wallet_that_bought_early_and_sold_higher_shows_it_in_every_feature() -> None:
    moves = moves_of(1337, blocks(100, 101, 102), alice_and_bob())
    features = wallet_features(moves, TOKENS)
    alice, bob = features[ALICE], features[BOB]
    assert alice.realised_pnl_usd == pytest.approx(500.0)  # 0.5 WETH: 1,000 for 500 of cost
    assert alice.unrealised_pnl_usd == pytest.approx(500.0)  # 0.5 WETH at 2,000, cost 500
    assert alice.roi == pytest.approx(1.0)
    assert (alice.win_rate, alice.closed_trades, alice.trades) == (1.0, 1, 2)
    assert alice.avg_holding_hours == pytest.approx(2.0)
    assert (alice.early_entry_share, alice.early_entries) == (1.0, 1)
    assert alice.volume_usd == pytest.approx(2_000.0)
    assert bob.unrealised_pnl_usd == pytest.approx(500.0)
    assert (bob.closed_trades, bob.early_entry_share) == (0, 0.0)  # second of two buyers
    assert default_score(alice).score > default_score(bob).score


def test_a_transfer_moves_a_position_without_a_gain_and_a_swaps_own_legs_count_once() -> None:
    facts = [
        *alice_and_bob(),
        transfer(103, ALICE, CAROL, WETH, E18 // 2),
        # The pool paying Alice inside her swap's transaction: the swap's own leg.
        {**transfer(100, PAIR, ALICE, WETH, E18), "tx_hash": "0xt100-0"},
        # Alice paying the pair in a transaction of its own before her sale: its leg too.
        {**transfer(102, ALICE, PAIR, WETH, E18 // 2), "tx_index": 0, "log_index": -1},
    ]
    moves = moves_of(1337, blocks(100, 101, 102, 103), facts)
    assert (ALICE, PAIR) in [(m.wallet, m.counterparty) for m in moves if m.block == 102]
    assert [(m.wallet, m.kind) for m in moves if m.block in (100, 103)] == [
        (ALICE, "swap"),
        (ALICE, "transfer"),
        (CAROL, "transfer"),
    ]
    features = wallet_features(moves, TOKENS)
    assert features[ALICE].realised_pnl_usd == pytest.approx(500.0)
    assert features[ALICE].unrealised_pnl_usd == pytest.approx(0.0)
    assert features[CAROL].unrealised_pnl_usd == pytest.approx(0.0)  # received at 2,000
    assert features[CAROL].trades == 0
    assert PAIR not in features  # a pool is no wallet


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([ALICE, BOB, CAROL]), st.booleans(), st.integers(1, 50)),
        min_size=1,
        max_size=30,
    )
)
def test_at_a_constant_price_no_wallet_gains_or_loses(trades: list[tuple[str, bool, int]]) -> None:
    """Whatever wallets buy and sell, when every trade is at 2,000 USDC per WETH nobody's
    realised plus unrealised PnL moves (a sale of more than was bought has no cost basis
    and books nothing)."""
    facts = []
    for index, (wallet, buys, weth_tenths) in enumerate(trades):
        weth, usdc = weth_tenths * E18 // 10, weth_tenths * 200 * E6
        pay, get = ((USDC, usdc), (WETH, weth)) if buys else ((WETH, weth), (USDC, usdc))
        facts.append(swap(index, PAIR, wallet, pay, get, block=100, log=index))
    features = wallet_features(moves_of(1337, blocks(100), facts), TOKENS)
    for found in features.values():
        assert found.realised_pnl_usd + found.unrealised_pnl_usd == pytest.approx(0.0, abs=1e-6)
        assert 0.0 <= default_score(found).score <= 100.0


def labelled_features(count: int, seed: int) -> tuple[dict[str, WalletFeatures], dict[str, int]]:
    """Wallets whose label follows their win rate and ROI, with noise."""
    rng = random.Random(seed)
    features, labels = {}, {}
    for index in range(count):
        smart = index % 2
        wallet = f"0x{index:040x}"
        values = {
            "realised_pnl_usd": rng.gauss(800 if smart else -100, 400),
            "unrealised_pnl_usd": rng.gauss(200, 300),
            "roi": rng.gauss(0.4 if smart else 0.0, 0.3),
            "win_rate": min(1.0, max(0.0, rng.gauss(0.7 if smart else 0.4, 0.15))),
            "closed_trades": rng.randint(1, 20),
            "trades": rng.randint(2, 40),
            "avg_holding_hours": rng.uniform(1, 100),
            "early_entry_share": rng.random(),
            "volume_usd": rng.uniform(1e3, 1e5),
        }
        features[wallet] = WalletFeatures(
            wallet=wallet,
            bought_usd=1_000.0,
            early_entries=0,
            tokens_bought=1,
            pools=(),
            first_block=1,
            last_block=2,
            **values,  # type: ignore[arg-type]
        )
        labels[wallet] = smart
    return features, labels


def test_the_model_scores_as_scikit_learn_does_and_round_trips_through_json(
    tmp_path: Path,
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = labelled_features(80, seed=1)
    model = train(features, labels, version=3, trained_at=1.0, seed=7)
    assert model.feature_names == FEATURE_NAMES
    assert model.metrics["roc_auc"] > 0.8  # the labels follow the features
    assert model.metrics["held_out"] == 20
    # The same fit, kept by scikit-learn: the JSON model's probabilities are its own.
    wallets = sorted(labels)
    x = [model_inputs(features[w]) for w in wallets]
    y = [labels[w] for w in wallets]
    x_train, _, y_train, _ = train_test_split(x, y, test_size=0.25, stratify=y, random_state=7)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000))
    pipeline.fit(x_train, y_train)
    expected = pipeline.predict_proba(x)[:, 1]
    for wallet, probability in zip(wallets, expected, strict=True):
        assert model.probability(features[wallet]) == pytest.approx(probability, rel=1e-9)
    path = tmp_path / "model.json"
    save_model(model, path)
    assert json.loads(path.read_text())["version"] == 3
    assert load_model(path) == model
    assert load_model(tmp_path / "none.json") is None


def test_training_refuses_too_few_or_one_sided_labels() -> None:
    features, labels = labelled_features(40, seed=2)
    with pytest.raises(TrainingRefused, match="at least 12"):
        train(features, dict(list(labels.items())[:8]), version=1, trained_at=0)
    one_sided = dict.fromkeys(list(labels)[:30], 1)
    with pytest.raises(TrainingRefused, match="each class"):
        train(features, one_sided, version=1, trained_at=0)


def test_a_manifest_naming_unknown_features_is_refused() -> None:
    features, labels = labelled_features(40, seed=3)
    manifest = train(features, labels, version=1, trained_at=0).manifest()
    manifest["feature_names"][0] = "lucky_number"
    with pytest.raises(ValueError, match="lucky_number"):
        SmartMoneyModel.from_manifest(manifest)


def test_labels_are_read_from_csv_and_bad_lines_are_named() -> None:
    lines = ["wallet,label", f"{ALICE.upper().replace('0X', '0x')},1", f"{BOB},0", "", "# x"]
    assert read_labels(lines) == {ALICE: 1, BOB: 0}
    with pytest.raises(TrainingRefused, match="line 2"):
        read_labels(["wallet,label", "alice,1"])
    with pytest.raises(TrainingRefused, match="line 1: label 'maybe'"):
        read_labels([f"{ALICE},maybe"])


async def test_the_history_read_model_keeps_the_moves_of_live_blocks(tmp_path: Path) -> None:
    chain = Chain()
    facts = alice_and_bob()
    for number in (100, 101, 102):
        block = {
            "number": number,
            "hash": f"0xb{number}",
            "parent_hash": f"0xb{number - 1}" if number > 100 else "0x00",
            "timestamp": (number - 100) * HOUR,
        }
        mined = [f for f in facts if f["block"] == number]
        chain.app.record_chain_step(ChainStep(1337, "evm:1337", blocks=[block], facts=mined))
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        assert model.apply(chain.log.read(0, 1_000_000))
        stored = model.wallet_moves(1337)
        assert stored == moves_of(1337, blocks(100, 101, 102), facts)
        # Features computed afresh on every call (the reorg below shows at once).
        reader = SmartMoneyReader(model, {1337: TOKENS}, tmp_path / "model.json", features_ttl=0)
        ranked = reader.rank()
        assert [s.features.wallet for s in ranked.wallets] == [ALICE, BOB]
        assert ranked.wallets[0].to_json()["features"]["realised_pnl_usd"] == pytest.approx(500)
        assert [s.rank for s in reader.rank(wallet=BOB).wallets] == [2]
        assert reader.rank(wallet=ROUTER).wallets == ()
        with pytest.raises(NoModel):
            reader.rank(ranking="model")
        with pytest.raises(UnknownChain):
            reader.rank(1)
        # A reorg orphans block 102: Alice's sale leaves the read model.
        chain.orphan(102)
        assert model.apply(chain.log.read(model.position(), 1_000_000))
        assert [m.block for m in model.wallet_moves(1337)] == [100, 101]
        assert reader.rank().wallets[0].features.closed_trades == 0
    finally:
        model.close()


def test_a_trained_model_ranks_by_its_probability(tmp_path: Path) -> None:
    features, labels = labelled_features(40, seed=4)
    path = tmp_path / "model.json"
    save_model(train(features, labels, version=1, trained_at=0), path)

    class Moves:
        def wallet_moves(self, chain_id: int) -> list[Any]:
            return moves_of(chain_id, blocks(100, 101, 102), alice_and_bob())

    ranked = SmartMoneyReader(Moves(), {1337: TOKENS}, path).rank(ranking="model")
    assert ranked.model is not None
    assert ranked.model.version == 1
    for wallet in ranked.wallets:
        assert wallet.model_probability is not None
        assert wallet.score == pytest.approx(100 * wallet.model_probability)
        assert wallet.model_contributions is not None
        assert set(wallet.model_contributions) == set(FEATURE_NAMES)
    assert [w.score for w in ranked.wallets] == sorted(
        (w.score for w in ranked.wallets), reverse=True
    )


def test_tokens_without_a_price_path_move_no_usd_figure() -> None:
    lonely = {USDC: TokenSpec(USDC, "USDC", 6, usd=None), WETH: TOKENS[WETH]}
    features = wallet_features(moves_of(1337, blocks(100, 101, 102), alice_and_bob()), lonely)
    assert features[ALICE].volume_usd == 0.0
    assert features[ALICE].trades == 2


def test_a_burst_of_readers_shares_one_pass_over_the_moves() -> None:
    """Anyone may ask for the ranking: concurrent and repeated requests within the
    features' lifetime cost one read and one computation, not one each."""
    reads = 0
    gate = threading.Event()

    class Counted:
        def wallet_moves(self, chain_id: int) -> list[WalletMove]:
            nonlocal reads
            reads += 1
            gate.wait(5)  # every reader arrives while the first pass is under way
            return moves_of(1337, blocks(100, 101, 102), alice_and_bob())

    reader = SmartMoneyReader(Counted(), {1337: TOKENS}, features_ttl=60)
    with ThreadPoolExecutor(8) as pool:
        answers = [pool.submit(reader.rank) for _ in range(8)]
        time.sleep(0.1)
        gate.set()
        ranked = [answer.result(10) for answer in answers]
    assert reads == 1
    assert {tuple(s.features.wallet for s in r.wallets) for r in ranked} == {(ALICE, BOB)}
    reader.rank(wallet=BOB)
    assert reads == 1
    # Past its lifetime the next request reads again.
    expired = SmartMoneyReader(Counted(), {1337: TOKENS}, features_ttl=0.05)
    expired.rank()
    time.sleep(0.1)
    expired.rank()
    assert reads == 3
