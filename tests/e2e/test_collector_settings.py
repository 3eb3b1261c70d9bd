"""A node sets the cyclic collector's thresholds while it runs (ADR 0012) and freezes what
lives at ready (ADR 0044)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from pydantic import ValidationError

from defi_realtime.entrypoints.settings import Settings

from .conftest import start_server


def test_the_default_makes_full_collections_rare() -> None:
    gen0, gen1, gen2 = Settings().collector_thresholds
    assert (gen0, gen1) == (700, 10)  # young collections as Python's default
    assert gen2 >= 100 * 10  # a full collection at most every ~7M net allocations


@pytest.mark.parametrize("value", ["700,10", "700,10,0", "a,b,c", "700,10,10,10", "-1,10,10"])
def test_bad_thresholds_are_refused_with_a_clear_error(value: str) -> None:
    with pytest.raises(ValidationError, match="three positive integers"):
        Settings(GC_THRESHOLDS=value)


def test_the_node_sets_the_thresholds_while_it_runs_and_restores_them(tmp_path: Path) -> None:
    before = gc.get_threshold()
    assert before != (700, 10, 777)
    with start_server(tmp_path / "data", gc_thresholds=" 700, 10,777") as server:
        assert server.settings.collector_thresholds == (700, 10, 777)
        assert gc.get_threshold() == (700, 10, 777)
    assert gc.get_threshold() == before


def test_the_node_freezes_what_lives_at_ready_and_unfreezes_on_exit(tmp_path: Path) -> None:
    assert Settings.model_fields["gc_freeze"].default is True  # (the suite turns it off)
    assert gc.get_freeze_count() == 0
    with start_server(tmp_path / "data", gc_freeze=True):
        # Everything alive at ready (this process's too: the server runs in a thread here)
        # is out of the collector's generations.
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("refreeze", [False, True])
def test_with_refreeze_a_full_collection_freezes_what_it_left_alive(
    tmp_path: Path, refreeze: bool
) -> None:
    with start_server(tmp_path / "data", gc_freeze=True, gc_refreeze=refreeze):
        frozen = gc.get_freeze_count()
        alive = [[n] for n in range(5_000)]  # tracked objects made after the node was ready
        gc.collect()
        grown = gc.get_freeze_count() - frozen
        assert grown >= len(alive) if refreeze else grown == 0
    assert gc.get_freeze_count() == 0
