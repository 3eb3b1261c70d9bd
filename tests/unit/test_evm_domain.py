"""The EvmChain aggregate and metric retraction: what a reorg undoes, and that undoing is
the same as never having recorded (docs/adr/0048)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.domain.errors import DomainError
from defi_realtime.domain.evm import EvmChain, ReorgDetected, ReorgTooDeep, tvl_key
from defi_realtime.domain.protocol import Protocol

POOL = "0x" + "ab" * 20
T0 = 1_700_000_000.0


def block(number: int, branch: str = "a") -> dict[str, Any]:
    return {
        "number": number,
        "hash": f"0x{branch}{number}",
        "parent_hash": f"0x{branch}{number - 1}" if number > 10 else "0xgenesis",
        "timestamp": 1_700_000_000 + number,
    }


def record(chain: EvmChain, number: int, tvl: float, branch: str = "a") -> None:
    parent = chain.recorded_hash(number - 1)
    made = block(number, branch)
    if parent is not None:
        made["parent_hash"] = parent
    chain.record_blocks(
        [made],
        [],
        {number: {POOL: [str(int(tvl)), "1"]}},
        [
            {
                "protocol": "dex",
                "chain": "Ethereum",
                "value": tvl,
                "observed_at": float(made["timestamp"]),
                "block": number,
            }
        ],
    )


def replayed(chain: EvmChain) -> EvmChain:
    """The aggregate rebuilt from its events, as the event store would."""
    rebuilt: EvmChain | None = None
    for event in chain.collect_events():
        rebuilt = event.mutate(rebuilt)  # type: ignore[assignment]
    assert rebuilt is not None
    return rebuilt


def test_records_blocks_that_chain_and_refuses_one_that_does_not() -> None:
    chain = EvmChain.open(1, "Ethereum", start_block=11, window=8)
    record(chain, 11, 100.0)
    record(chain, 12, 120.0)
    assert (chain.head, chain.tvl(tvl_key("dex", "Ethereum"))) == (12, 120.0)
    assert chain.reserves(POOL) == (120, 1)
    stranger = block(13, "b")  # its parent is another branch's block 12
    with pytest.raises(ReorgDetected):
        chain.record_blocks([stranger], [], {}, [])
    with pytest.raises(DomainError, match="out of order"):
        chain.record_blocks([block(15)], [], {}, [])
    assert chain.head == 12


def test_orphaning_restores_the_fork_point_and_names_what_to_retract() -> None:
    chain = EvmChain.open(1, "Ethereum", start_block=11, window=8)
    for number, tvl in ((11, 100.0), (12, 120.0), (13, 130.0), (14, 140.0)):
        record(chain, number, tvl)
    restored = chain.orphan_from(13)
    key = tvl_key("dex", "Ethereum")
    assert restored == [
        {"protocol": "dex", "chain": "Ethereum", "observed_at": 1_700_000_013.0, "value": 120.0},
        {"protocol": "dex", "chain": "Ethereum", "observed_at": 1_700_000_014.0, "value": 120.0},
    ]
    assert (chain.head, chain.tvl(key), chain.reserves(POOL)) == (12, 120.0, (120, 1))
    record(chain, 13, 99.0, branch="b")  # the new branch continues from the fork point
    assert (chain.head, chain.tvl(key)) == (13, 99.0)
    rebuilt = replayed(chain)
    assert (rebuilt.head, rebuilt.hashes, rebuilt.tvl(key)) == (13, chain.hashes, 99.0)


def test_a_reorg_below_the_window_is_refused() -> None:
    chain = EvmChain.open(1, "Ethereum", start_block=11, window=3)
    for number in range(11, 17):
        record(chain, number, float(number))
    assert sorted(chain.hashes) == [14, 15, 16]
    assert chain.tvl(tvl_key("dex", "Ethereum")) == 16.0
    with pytest.raises(ReorgTooDeep):
        chain.orphan_from(13)
    assert chain.orphan_from(14)[0]["value"] == 13.0  # the base: the state after block 13


def test_retracting_a_metric_restores_the_value_as_a_fact_of_its_own() -> None:
    protocol = Protocol.create("dex", "Dex")
    protocol.record_metric("tvl", "Ethereum", 100.0, T0)
    protocol.record_metric("tvl", "Ethereum", 150.0, T0 + 12)
    assert protocol.retract_metric("tvl", "Ethereum", T0 + 12, 100.0, "evm:1:reorg")
    assert protocol.current_value("tvl", "Ethereum") == 100.0
    assert protocol.recent[("tvl", "Ethereum")][T0 + 12] == 100.0
    # Nothing observed there, or the value is already the restored one: nothing recorded.
    assert not protocol.retract_metric("tvl", "Ethereum", T0 + 24, 100.0)
    assert not protocol.retract_metric("tvl", "Ethereum", T0 + 12, 100.0)
    events = protocol.collect_events()
    assert type(events[-1]).__qualname__ == "Protocol.MetricRetracted"
    rebuilt: Protocol | None = None
    for event in events:
        rebuilt = event.mutate(rebuilt)  # type: ignore[assignment]
    assert rebuilt is not None
    assert rebuilt.current == protocol.current


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=4), st.integers(min_value=0, max_value=4)),
        min_size=1,
        max_size=12,
    )
)
def test_a_reorg_leaves_the_state_of_never_having_recorded_the_orphans(
    steps: list[tuple[int, int]],
) -> None:
    """Record runs of blocks; after each run, orphan the last ``depth`` blocks and record the
    same heights on another branch. The state equals one built from the surviving blocks
    only: a retraction is as if the orphans had never been recorded."""
    chain = EvmChain.open(1, "Ethereum", start_block=11, window=64)
    survivors: dict[int, tuple[float, str]] = {}
    number, branch = 11, 0
    for run, depth in steps:
        for _ in range(run):
            tvl = float(number * 10 + branch)
            record(chain, number, tvl, branch=str(branch))
            survivors[number] = (tvl, str(branch))
            number += 1
        depth = min(depth, number - 11)
        if depth:
            number -= depth
            chain.orphan_from(number)
            for gone in range(number, number + depth):
                del survivors[gone]
            branch += 1
    clean = EvmChain.open(1, "Ethereum", start_block=11, window=64)
    for height in sorted(survivors):
        tvl, on = survivors[height]
        record(clean, height, tvl, branch=on)
    key = tvl_key("dex", "Ethereum")
    assert (chain.head, chain.hashes, chain.tvl(key), chain.reserves(POOL)) == (
        clean.head,
        clean.hashes,
        clean.tvl(key),
        clean.reserves(POOL),
    )
