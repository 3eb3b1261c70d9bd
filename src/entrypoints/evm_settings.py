"""The ``EVM_CHAINS`` setting: the chains EVM collectors follow, as a JSON list.

Each entry names a chain (id and the name its observations carry), its JSON-RPC URLs (tried
in turn), its confirmation depth and request budget, and the pools and tokens to watch.
Validated here with pydantic, into the application's ``ChainSpec`` values; a bad entry
stops the process at start with the field at fault (docs/onchain.md).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from ..application.evm_facts import ChainSpec, PoolSpec, TokenSpec
from ..domain.evm import DEFAULT_REORG_WINDOW
from ..domain.observations import check_chain
from ..domain.protocol import check_slug

Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvmToken(_Strict):
    address: Address
    symbol: str = Field(min_length=1, max_length=32)
    decimals: int = Field(default=18, ge=0, le=36)
    usd: float | None = Field(
        default=None,
        gt=0,
        description="a fixed USD price (stable coins); unset: valued through its pool",
    )


class EvmPool(_Strict):
    address: Address
    protocol: str = Field(description="the DEX protocol's slug (uniswap-v2)")
    protocol_name: str = Field(min_length=1, max_length=200)
    kind: Literal["v2", "v3"]
    token0: Address
    token1: Address

    @field_validator("protocol")
    @classmethod
    def _slug(cls, value: str) -> str:
        return check_slug(value)


class EvmChainSetting(_Strict):
    chain_id: int = Field(gt=0)
    name: str = Field(description="the chain's name as DeFiLlama writes it (Ethereum)")
    rpc_urls: list[str] = Field(min_length=1, max_length=8)
    confirmations: int = Field(default=12, ge=0, lt=DEFAULT_REORG_WINDOW)
    start_block: int = Field(default=0, ge=0)
    max_blocks_per_step: int = Field(default=100, ge=1, le=2_000)
    requests_per_second: float = Field(default=20.0, ge=1, le=10_000)
    poll_interval: float = Field(default=2.0, gt=0, le=3_600)
    pools: list[EvmPool] = Field(default_factory=list, max_length=1_000)
    tokens: list[EvmToken] = Field(default_factory=list, max_length=1_000)

    @field_validator("name")
    @classmethod
    def _chain(cls, value: str) -> str:
        return check_chain(value)

    @field_validator("rpc_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parsed = urlparse(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"not an http(s) URL with a host: {url!r}")
        return urls


_CHAINS = TypeAdapter(list[EvmChainSetting])


def parse_chains(raw: str) -> list[EvmChainSetting]:
    """``EVM_CHAINS`` parsed and validated (empty text: no chain)."""
    if not raw.strip():
        return []
    chains = _CHAINS.validate_python(json.loads(raw))
    ids = [chain.chain_id for chain in chains]
    if len(set(ids)) != len(ids):
        raise ValueError("EVM_CHAINS names a chain id twice")
    return chains


def chain_specs(raw: str) -> tuple[ChainSpec, ...]:
    """The collectors' ``ChainSpec``s of ``EVM_CHAINS``. A protocol collected on one chain
    only also gets its ``total`` TVL from it; one on several chains gets chain TVLs only
    (a collector sees one chain, so it cannot add them up)."""
    chains = parse_chains(raw)
    chains_of: dict[str, set[int]] = {}
    for chain in chains:
        for pool in chain.pools:
            chains_of.setdefault(pool.protocol, set()).add(chain.chain_id)
    specs = []
    for chain in chains:
        protocols = {pool.protocol for pool in chain.pools}
        specs.append(
            ChainSpec(
                chain_id=chain.chain_id,
                name=chain.name,
                rpc_urls=tuple(chain.rpc_urls),
                confirmations=chain.confirmations,
                start_block=chain.start_block,
                max_blocks_per_step=chain.max_blocks_per_step,
                requests_per_second=chain.requests_per_second,
                poll_interval=chain.poll_interval,
                record_total=all(len(chains_of[p]) == 1 for p in protocols),
                pools=tuple(
                    PoolSpec(
                        address=pool.address.lower(),
                        protocol=pool.protocol,
                        protocol_name=pool.protocol_name,
                        kind=pool.kind,
                        token0=pool.token0.lower(),
                        token1=pool.token1.lower(),
                    )
                    for pool in chain.pools
                ),
                tokens=tuple(
                    TokenSpec(
                        address=token.address.lower(),
                        symbol=token.symbol,
                        decimals=token.decimals,
                        usd=token.usd,
                    )
                    for token in chain.tokens
                ),
            )
        )
    return tuple(specs)
