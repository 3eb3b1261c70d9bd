"""Chain names as DeFiLlama writes them: one canonical name per chain, with its aliases.

``chains.json`` (package data) lists every chain named in DeFiLlama's ``/protocols`` captures
of December 2025 (449 names, DeFiLlama's own spelling: ``BSC``, ``OP Mainnet``, ``Gnosis``),
the older names DeFiLlama used for some of them (``Binance``, ``Optimism``, ``xDai``,
``Klaytn``...) and, for the main chains, the facts ``/v2/chains`` reports (native token
symbol, CoinGecko id, CoinMarketCap id, EVM chain id).

``canonical_chain`` is applied wherever a chain name enters (observations, listings, query
filters) and where old events are read back, so ``"ethereum "``, ``"Ethereum"`` and
``"ETHEREUM"`` are one chain, and so are ``Binance`` and ``BSC``. A name the registry does
not know keeps its spelling (surrounding whitespace removed, inner runs collapsed); filters
compare such names case-insensitively (``chain_key``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["ChainInfo", "canonical_chain", "chain_info", "chain_key", "known_chains"]


# Bounded caches: names come from outside, and a flood of distinct ones must not grow memory.
_CACHE_SIZE: Final = 4_096


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """A chain DeFiLlama lists, with the facts ``/v2/chains`` reports (None: not known)."""

    name: str
    aliases: tuple[str, ...]
    token_symbol: str | None
    gecko_id: str | None
    cmc_id: str | None
    chain_id: int | None


def _spelling(name: str) -> str:
    return " ".join(name.split()).casefold()


@functools.cache
def _registry() -> tuple[dict[str, ChainInfo], dict[str, ChainInfo]]:
    """(canonical name -> info, key of every name and alias -> info), read once."""
    raw = json.loads(resources.files(__package__).joinpath("chains.json").read_text("utf-8"))
    by_name: dict[str, ChainInfo] = {}
    by_key: dict[str, ChainInfo] = {}
    for record in raw["chains"]:
        info = ChainInfo(
            name=record["name"],
            aliases=tuple(record["aliases"]),
            token_symbol=record["tokenSymbol"],
            gecko_id=record["gecko_id"],
            cmc_id=record["cmcId"],
            chain_id=record["chainId"],
        )
        by_name[info.name] = info
        for spelling in (info.name, *info.aliases):
            by_key.setdefault(_spelling(spelling), info)
    return by_name, by_key


@functools.lru_cache(maxsize=_CACHE_SIZE)
def canonical_chain(name: str) -> str:
    """DeFiLlama's name for chain ``name`` (any case, an alias, stray whitespace), or
    ``name`` with its whitespace tidied when the chain is not in the registry."""
    info = _registry()[1].get(_spelling(name))
    return info.name if info is not None else " ".join(name.split())


@functools.lru_cache(maxsize=_CACHE_SIZE)
def chain_key(name: str) -> str:
    """The form every spelling of one chain shares, its aliases included: the canonical
    name case-folded (filters compare these)."""
    return canonical_chain(name).casefold()


def chain_info(name: str) -> ChainInfo | None:
    """The registry's entry for ``name`` (any spelling), or None."""
    return _registry()[1].get(_spelling(name))


def known_chains() -> tuple[ChainInfo, ...]:
    """Every chain of the registry, the most listed first."""
    return tuple(_registry()[0].values())
