"""Decoding EVM logs into facts, valuing pools, and the ``EVM_CHAINS`` setting."""

from __future__ import annotations

import json
from typing import Any

import pytest
from Crypto.Hash import keccak
from pydantic import ValidationError

from defi_realtime.adapters.event_store_log import to_entry
from defi_realtime.application.evm_facts import (
    SIGNATURES,
    TRANSFER,
    V2_BURN,
    V2_MINT,
    V2_SWAP,
    V2_SYNC,
    V3_SWAP,
    PoolSpec,
    TokenSpec,
    apply_fact,
    decode_log,
    pool_value,
)
from defi_realtime.domain.protocol import Protocol
from defi_realtime.entrypoints.evm_settings import chain_specs
from defi_realtime.entrypoints.roles import plan
from defi_realtime.entrypoints.settings import Settings

USDC, WETH = "0x" + "11" * 20, "0x" + "22" * 20
PAIR, POOL3 = "0x" + "aa" * 20, "0x" + "bb" * 20
ALICE, BOB = "0x" + "01" * 20, "0x" + "02" * 20
POOLS = {
    PAIR: PoolSpec(PAIR, "dex-v2", "Dex V2", "v2", USDC, WETH),
    POOL3: PoolSpec(POOL3, "dex-v3", "Dex V3", "v3", USDC, WETH),
}
TOKENS = {
    USDC: TokenSpec(USDC, "USDC", 6, usd=1.0),
    WETH: TokenSpec(WETH, "WETH", 18),
}


def topic(address: str) -> str:
    return "0x" + address[2:].rjust(64, "0")


def words(*values: int) -> str:
    return "0x" + "".join((v % (1 << 256)).to_bytes(32, "big").hex() for v in values)


def raw_log(address: str, topics: list[str], data: str, log_index: int = 3) -> dict[str, Any]:
    return {
        "address": address.upper().replace("0X", "0x"),  # nodes may answer checksummed
        "topics": topics,
        "data": data,
        "blockNumber": "0x10",
        "blockHash": "0x" + "cd" * 32,
        "transactionHash": "0x" + "ef" * 32,
        "transactionIndex": "0x2",
        "logIndex": hex(log_index),
        "removed": False,
    }


def test_topics_are_the_keccak_of_the_event_signatures() -> None:
    for topic0, signature in SIGNATURES.items():
        digest = keccak.new(digest_bits=256, data=signature.encode()).hexdigest()
        assert topic0 == "0x" + digest, signature


def test_a_v2_swap_carries_what_a_sandwich_detector_needs() -> None:
    fact = decode_log(
        raw_log(PAIR, [V2_SWAP, topic(ALICE), topic(BOB)], words(5, 0, 0, 7)), POOLS, TOKENS
    )
    assert fact == {
        "kind": "swap",
        "block": 16,
        "block_hash": "0x" + "cd" * 32,
        "tx_hash": "0x" + "ef" * 32,
        "tx_index": 2,
        "log_index": 3,
        "address": PAIR,
        "pool": PAIR,
        "protocol": "dex-v2",
        "version": "v2",
        "sender": ALICE,
        "recipient": BOB,
        "token0": USDC,
        "token1": WETH,
        "amount0_in": "5",
        "amount1_in": "0",
        "amount0_out": "0",
        "amount1_out": "7",
    }


def test_a_v3_swap_splits_signed_amounts_into_in_and_out() -> None:
    big = 3 * 10**30  # beyond 64 bits: amounts are decimal strings
    data = words(big, -(10**18), 2**96, 10**20, -5)
    fact = decode_log(raw_log(POOL3, [V3_SWAP, topic(ALICE), topic(BOB)], data), POOLS, TOKENS)
    assert fact is not None
    assert (fact["amount0_in"], fact["amount1_in"]) == (str(big), "0")
    assert (fact["amount0_out"], fact["amount1_out"]) == ("0", str(10**18))
    assert (fact["tick"], fact["sqrt_price_x96"], fact["version"]) == (-5, str(2**96), "v3")


def test_sync_mint_burn_and_transfer() -> None:
    sync = decode_log(raw_log(PAIR, [V2_SYNC], words(10, 20)), POOLS, TOKENS)
    assert sync is not None
    assert (sync["kind"], sync["reserve0"], sync["reserve1"]) == ("sync", "10", "20")
    mint = decode_log(raw_log(PAIR, [V2_MINT, topic(ALICE)], words(1, 2)), POOLS, TOKENS)
    assert mint is not None
    assert (mint["kind"], mint["sender"], mint["amount1"]) == ("mint", ALICE, "2")
    burn = decode_log(
        raw_log(PAIR, [V2_BURN, topic(ALICE), topic(BOB)], words(1, 2)), POOLS, TOKENS
    )
    assert burn is not None
    assert (burn["kind"], burn["to"]) == ("burn", BOB)
    transfer = decode_log(
        raw_log(USDC, [TRANSFER, topic(ALICE), topic(POOL3)], words(9)), POOLS, TOKENS
    )
    assert transfer is not None
    assert (transfer["token"], transfer["sender"], transfer["recipient"], transfer["amount"]) == (
        USDC,
        ALICE,
        POOL3,
        "9",
    )


def test_logs_that_are_not_ours_decode_to_nothing() -> None:
    stranger = "0x" + "99" * 20
    assert decode_log(raw_log(stranger, [V2_SYNC], words(1, 2)), POOLS, TOKENS) is None
    # A V2 event from the V3 pool, an unknown event, no topics at all.
    assert decode_log(raw_log(POOL3, [V2_SYNC], words(1, 2)), POOLS, TOKENS) is None
    assert decode_log(raw_log(PAIR, ["0x" + "00" * 32], "0x"), POOLS, TOKENS) is None
    assert decode_log(raw_log(PAIR, [], "0x"), POOLS, TOKENS) is None
    # An ERC-721 Transfer (the token id indexed: four topics) is not an ERC-20 one.
    nft = raw_log(USDC, [TRANSFER, topic(ALICE), topic(BOB), topic(ALICE)], "0x")
    assert decode_log(nft, POOLS, TOKENS) is None


def test_pool_value_prices_the_unpriced_leg_through_the_pool() -> None:
    pool = POOLS[PAIR]
    # 2,000 USDC and 1 WETH: the WETH leg is worth the USDC leg (constant product).
    assert pool_value((2_000 * 10**6, 10**18), pool, TOKENS) == 4_000.0
    both = {**TOKENS, WETH: TokenSpec(WETH, "WETH", 18, usd=1_500.0)}
    assert pool_value((2_000 * 10**6, 10**18), pool, both) == 3_500.0
    assert pool_value((1, 1), pool, {}) is None


def test_reserves_follow_syncs_and_a_v3_pools_transfers() -> None:
    reserves: dict[str, tuple[int, int]] = {POOL3: (100, 50)}
    sync = {"kind": "sync", "address": PAIR, "reserve0": "7", "reserve1": "8"}
    assert apply_fact(reserves, sync, POOLS) == PAIR
    into = {"kind": "transfer", "token": USDC, "sender": ALICE, "recipient": POOL3, "amount": "5"}
    out = {"kind": "transfer", "token": WETH, "sender": POOL3, "recipient": ALICE, "amount": "3"}
    assert apply_fact(reserves, into, POOLS) == POOL3
    assert apply_fact(reserves, out, POOLS) == POOL3
    elsewhere = {
        "kind": "transfer",
        "token": USDC,
        "sender": ALICE,
        "recipient": BOB,
        "amount": "1",
    }
    assert apply_fact(reserves, elsewhere, POOLS) is None
    assert reserves == {PAIR: (7, 8), POOL3: (105, 47)}


def chain(**overrides: Any) -> dict[str, Any]:
    return {
        "chain_id": 1,
        "name": "ethereum",
        "rpc_urls": ["http://127.0.0.1:8545"],
        "pools": [
            {
                "address": PAIR.upper().replace("0X", "0x"),
                "protocol": "dex-v2",
                "protocol_name": "Dex V2",
                "kind": "v2",
                "token0": USDC,
                "token1": WETH,
            }
        ],
        "tokens": [{"address": USDC, "symbol": "USDC", "decimals": 6, "usd": 1}],
        **overrides,
    }


def test_the_setting_becomes_chain_specs() -> None:
    (spec,) = chain_specs(json.dumps([chain()]))
    assert (spec.name, spec.confirmations, spec.record_total) == ("Ethereum", 12, True)
    assert spec.pools[0].address == PAIR  # addresses lower-cased
    assert spec.watched() == [PAIR, USDC]
    # The same protocol on two chains: chain TVLs only, no total.
    two = chain_specs(json.dumps([chain(), chain(chain_id=10, name="OP Mainnet")]))
    assert [spec.record_total for spec in two] == [False, False]
    assert Settings(evm_chains="").evm_chains == ""


@pytest.mark.parametrize(
    ("entry", "fault"),
    [
        (chain(rpc_urls=[]), "rpc_urls"),
        (chain(rpc_urls=["ftp://127.0.0.1"]), "http"),
        (chain(chain_id=0), "chain_id"),
        (chain(confirmations=-1), "confirmations"),
        (chain(pools=[{**chain()["pools"][0], "address": "0x12"}]), "address"),
        (chain(pools=[{**chain()["pools"][0], "kind": "v4"}]), "kind"),
        (chain(pools=[{**chain()["pools"][0], "protocol": "Not A Slug"}]), "slug"),
        (chain(surprise=1), "surprise"),
    ],
)
def test_a_bad_chain_entry_is_refused_with_its_field(entry: dict[str, Any], fault: str) -> None:
    with pytest.raises(ValidationError, match=fault):
        Settings(evm_chains=json.dumps([entry]))


def test_the_same_chain_twice_is_refused() -> None:
    with pytest.raises(ValidationError, match="twice"):
        Settings(evm_chains=json.dumps([chain(), chain()]))


def test_a_retraction_reaches_the_log_as_a_flagged_correction() -> None:
    protocol = Protocol.create("dex-v2", "Dex V2")
    protocol.record_metric("tvl", "Ethereum", 10.0, 1_700_000_000.0)
    protocol.record_metric("tvl", "Ethereum", 30.0, 1_700_000_012.0)
    protocol.retract_metric("tvl", "Ethereum", 1_700_000_012.0, 10.0, "evm:1:reorg")
    entry = to_entry(7, protocol.collect_events()[-1])
    assert entry is not None
    assert (entry.kind, entry.key) == ("metric", "dex-v2")
    assert dict(entry.data) == {
        "metric": "tvl",
        "chain": "Ethereum",
        "value": 10.0,
        "observed_at": 1_700_000_012.0,
        "source": "evm:1:reorg",
        "retracted": True,
    }


def test_serve_runs_the_evm_role_only_with_chains_and_the_worker_always() -> None:
    def roles(process: str, chains: str) -> list[str]:
        return [placement.role.name for placement in plan(process, Settings(evm_chains=chains))]

    assert "evm" not in roles("serve", "")
    assert "mev" not in roles("serve", "")
    assert {"evm", "mev"} <= set(roles("serve", json.dumps([chain()])))
    # The MEV detector runs beside the collectors it reads (ADR 0050).
    assert roles("evm", "") == ["evm", "mev"]
