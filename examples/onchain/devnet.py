"""A local EVM chain to point a collector at: ganache on 127.0.0.1, two tokens, a
Uniswap-V2-style pair and a V3-style pool, compiled offline with solcjs, and trades.

    python examples/onchain/devnet.py            # start, deploy, print EVM_CHAINS, trade
    python examples/onchain/devnet.py --port 8545 --trades 20 --interval 2

Needs the project's EVM tools (``make evm-tools``: ganache and solc from the npm registry,
into ``tools/evm``). The tests use the same module (``tests/evm_devnet.py``), so what the
docs walk through is what CI runs. Only 127.0.0.1: nothing here reaches another host.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = Path(__file__).resolve().parent / "contracts"
TOOLS = ROOT / "tools" / "evm" / "node_modules"
GANACHE = TOOLS / "ganache" / "dist" / "node" / "cli.js"
SOLCJS = TOOLS / "solc" / "solc.js"
CHAIN_ID = 1337
UNIT = 10**18


def tools_missing() -> str | None:
    """Why the local chain cannot run here (None: it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    for path in (GANACHE, SOLCJS):
        if not path.exists():
            return f"{path} is missing: run `make evm-tools` (npm install in tools/evm)"
    return None


BUILD = CONTRACTS / "build.json"


def sources_digest() -> str:
    """The hash of ``contracts/*.sol``: what ``build.json`` was compiled from."""
    sources = {path.name: path.read_text() for path in sorted(CONTRACTS.glob("*.sol"))}
    return hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()


def load_contracts() -> dict[str, dict[str, Any]]:
    """The committed build (``contracts/build.json``) when it is of the current sources
    (compiling takes solcjs seconds); otherwise a fresh compile, cached under var/."""
    if BUILD.exists():
        build = json.loads(BUILD.read_text())
        if build["sources_sha256"] == sources_digest():
            contracts: dict[str, dict[str, Any]] = build["contracts"]
            return contracts
    return compile_contracts(ROOT / "var" / "evm-build")


def write_build() -> None:
    """Compile and write ``contracts/build.json`` (after changing a contract)."""
    contracts = compile_contracts(None)
    build = {"sources_sha256": sources_digest(), "solc": "0.8.26", "contracts": contracts}
    BUILD.write_text(json.dumps(build, indent=1, sort_keys=True) + "\n")


def compile_contracts(cache_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Compile ``contracts/*.sol`` with solcjs (offline, the npm package's own compiler);
    {name: {"abi", "bytecode", "methods"}}. Cached in ``cache_dir`` by the sources' hash."""
    sources = {path.name: path.read_text() for path in sorted(CONTRACTS.glob("*.sol"))}
    digest = sources_digest()[:16]
    cached = None if cache_dir is None else cache_dir / f"contracts-{digest}.json"
    if cached is not None and cached.exists():
        loaded: dict[str, dict[str, Any]] = json.loads(cached.read_text())
        return loaded
    request = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.methodIdentifiers"]}
            },
        },
    }
    done = subprocess.run(
        ["node", str(SOLCJS), "--standard-json"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    output = json.loads(done.stdout[done.stdout.index("{") :])
    errors = [e for e in output.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise RuntimeError("solc: " + "; ".join(e["formattedMessage"] for e in errors))
    built = {
        name: {
            "abi": contract["abi"],
            "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
            "methods": contract["evm"]["methodIdentifiers"],
        }
        for unit in output["contracts"].values()
        for name, contract in unit.items()
        if contract["evm"]["bytecode"]["object"]  # not the interfaces
    }
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(built))
    return built


def start_ganache(port: int, *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ganache on 127.0.0.1:``port`` (deterministic accounts, one block per
    transaction) and wait until it answers."""
    command = [
        "node",
        str(GANACHE),
        "--server.host=127.0.0.1",
        f"--server.port={port}",
        f"--chain.chainId={CHAIN_ID}",
        "--wallet.deterministic",
        "--logging.quiet",
        "--chain.vmErrorsOnRPCResponse=true",
    ]
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    if log is None:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env
        )
    else:
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(
                f"http://127.0.0.1:{port}",
                json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
                timeout=1,
            ).raise_for_status()
            return process
        except httpx.HTTPError:
            if process.poll() is not None:
                raise RuntimeError(f"ganache exited with {process.returncode}") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("ganache did not answer within 30 s")


def _word(value: Any) -> str:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str):  # an address
        return value[2:].lower().rjust(64, "0")
    return (value % (1 << 256)).to_bytes(32, "big").hex()


@dataclass
class Devnet:
    """A JSON-RPC client of the local chain with the contracts compiled."""

    url: str
    contracts: dict[str, dict[str, Any]]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Devnet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def rpc(self, method: str, *params: Any) -> Any:
        answer = self.http.post(
            self.url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).json()
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    @property
    def accounts(self) -> list[str]:
        return [str(a) for a in self.rpc("eth_accounts")]

    def _transact(self, sender: str, to: str | None, data: str) -> dict[str, Any]:
        tx: dict[str, Any] = {"from": sender, "data": data, "gas": hex(3_000_000)}
        if to is not None:
            tx["to"] = to
        tx_hash = self.rpc("eth_sendTransaction", tx)
        receipt: dict[str, Any] | None = self.rpc("eth_getTransactionReceipt", tx_hash)
        if receipt is None or receipt.get("status") != "0x1":
            raise RuntimeError(f"transaction failed: {receipt}")
        return receipt

    def deploy(self, contract: str, *args: Any, sender: str | None = None) -> str:
        code = self.contracts[contract]["bytecode"] + "".join(_word(a) for a in args)
        receipt = self._transact(sender or self.accounts[0], None, code)
        return str(receipt["contractAddress"]).lower()

    def send(
        self, contract: str, to: str, signature: str, *args: Any, sender: str | None = None
    ) -> dict[str, Any]:
        selector = self.contracts[contract]["methods"][signature]
        data = "0x" + selector + "".join(_word(a) for a in args)
        return self._transact(sender or self.accounts[0], to, data)

    def call(self, contract: str, to: str, signature: str, *args: Any) -> bytes:
        selector = self.contracts[contract]["methods"][signature]
        data = "0x" + selector + "".join(_word(a) for a in args)
        return bytes.fromhex(self.rpc("eth_call", {"to": to, "data": data}, "latest")[2:])

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            self.rpc("evm_mine")

    def snapshot(self) -> str:
        return str(self.rpc("evm_snapshot"))

    def revert(self, snapshot: str) -> None:
        if not self.rpc("evm_revert", snapshot):
            raise RuntimeError(f"evm_revert {snapshot} refused")


@dataclass
class Market:
    """Two tokens (a stable coin with 6 decimals and WETH-like with 18), a V2 pair and a
    V3-style pool of them, funded by account 0."""

    devnet: Devnet
    usdc: str
    weth: str
    pair: str
    v3pool: str

    @property
    def token0(self) -> str:
        return min(self.usdc, self.weth)

    @property
    def token1(self) -> str:
        return max(self.usdc, self.weth)

    @classmethod
    def deploy(
        cls, devnet: Devnet, *, usdc_liquidity: int = 2_000_000, eth_liquidity: int = 1_000
    ) -> Market:
        usdc = devnet.deploy("TestToken", 6, 10**9 * 10**6)
        weth = devnet.deploy("TestToken", 18, 10**6 * UNIT)
        token0, token1 = min(usdc, weth), max(usdc, weth)
        pair = devnet.deploy("MiniPair", token0, token1)
        v3pool = devnet.deploy("MiniV3Pool", token0, token1)
        market = cls(devnet, usdc, weth, pair, v3pool)
        market.add_liquidity(usdc_liquidity * 10**6, eth_liquidity * UNIT)
        for token, amount in ((usdc, usdc_liquidity * 10**6), (weth, eth_liquidity * UNIT)):
            devnet.send("TestToken", token, "transfer(address,uint256)", v3pool, amount)
        return market

    def add_liquidity(self, usdc_amount: int, weth_amount: int) -> None:
        d = self.devnet
        d.send("TestToken", self.usdc, "transfer(address,uint256)", self.pair, usdc_amount)
        d.send("TestToken", self.weth, "transfer(address,uint256)", self.pair, weth_amount)
        d.send("MiniPair", self.pair, "mint(address)", d.accounts[0])

    def reserves(self) -> tuple[int, int]:
        raw = self.devnet.call("MiniPair", self.pair, "getReserves()")
        return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big")

    def swap_usdc_for_weth(self, usdc_in: int, trader: str | None = None) -> None:
        """Sell ``usdc_in`` (raw units) into the V2 pair for what the constant product gives."""
        d = self.devnet
        trader = trader or d.accounts[0]
        r0, r1 = self.reserves()
        usdc_is_0 = self.usdc == self.token0
        reserve_in, reserve_out = (r0, r1) if usdc_is_0 else (r1, r0)
        out = usdc_in * 997 * reserve_out // (reserve_in * 1000 + usdc_in * 997)
        d.send(
            "TestToken", self.usdc, "transfer(address,uint256)", self.pair, usdc_in, sender=trader
        )
        args = (0, out) if usdc_is_0 else (out, 0)
        d.send("MiniPair", self.pair, "swap(uint256,uint256,address)", *args, trader, sender=trader)

    def swap_v3(self, usdc_in: int, weth_out: int, trader: str | None = None) -> None:
        d = self.devnet
        trader = trader or d.accounts[0]
        d.send(
            "TestToken", self.usdc, "transfer(address,uint256)", self.v3pool, usdc_in, sender=trader
        )
        zero_for_one = self.usdc == self.token0
        d.send(
            "MiniV3Pool",
            self.v3pool,
            "swap(address,bool,uint256,uint256)",
            trader,
            zero_for_one,
            usdc_in,
            weth_out,
            sender=trader,
        )

    def chain_setting(
        self, url: str, *, confirmations: int = 0, start_block: int = 0
    ) -> dict[str, Any]:
        """The ``EVM_CHAINS`` entry for this market (USDC priced at $1)."""
        return {
            "chain_id": CHAIN_ID,
            "name": "Ganache",
            "rpc_urls": [url],
            "confirmations": confirmations,
            "start_block": start_block,
            "poll_interval": 0.2,
            "tokens": [
                {"address": self.usdc, "symbol": "USDC", "decimals": 6, "usd": 1.0},
                {"address": self.weth, "symbol": "WETH", "decimals": 18},
            ],
            "pools": [
                {
                    "address": self.pair,
                    "protocol": "local-swap-v2",
                    "protocol_name": "Local Swap V2",
                    "kind": "v2",
                    "token0": self.token0,
                    "token1": self.token1,
                },
                {
                    "address": self.v3pool,
                    "protocol": "local-swap-v3",
                    "protocol_name": "Local Swap V3",
                    "kind": "v3",
                    "token0": self.token0,
                    "token1": self.token1,
                },
            ],
        }


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8545)
    parser.add_argument(
        "--trades", type=int, default=30, help="trades to make, then keep the chain up"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between trades")
    parser.add_argument(
        "--write-build", action="store_true", help="recompile contracts/build.json and exit"
    )
    args = parser.parse_args()
    if args.write_build:
        write_build()
        return
    why = tools_missing()
    if why:
        sys.exit(f"error: {why}")
    # SIGTERM too ends the chain with the script (not only Ctrl-C).
    signal.signal(signal.SIGTERM, _interrupt)
    contracts = load_contracts()
    url = f"http://127.0.0.1:{args.port}"
    process = start_ganache(args.port)
    try:
        market = Market.deploy(Devnet(url, contracts))  # closed with the process
        print("EVM_CHAINS='" + json.dumps([market.chain_setting(url)]) + "'", flush=True)
        for _ in range(args.trades):
            market.swap_usdc_for_weth(10_000 * 10**6)
            print(
                f"traded at block {market.devnet.head()}; reserves {market.reserves()}", flush=True
            )
            time.sleep(args.interval)
        print("trades done; the chain stays up (Ctrl-C to stop)", flush=True)
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
