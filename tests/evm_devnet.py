"""The local EVM chain for the on-chain tests: ``examples/onchain/devnet.py`` (the module
the docs walk through), loaded from its file, and a ganache process on a free port.

ganache and solc come from the npm registry into ``tools/evm`` (``make evm-tools``, run by
.ci/run): missing, the tests skip locally and FAIL under ``CI=true`` (``missing``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from tests.services import missing

DEVNET_FILE = Path(__file__).resolve().parents[1] / "examples" / "onchain" / "devnet.py"


def devnet_module() -> ModuleType:
    """``examples/onchain/devnet.py`` as a module (examples are not a package)."""
    found = sys.modules.get("onchain_devnet")
    if found is not None:
        return found
    spec = importlib.util.spec_from_file_location("onchain_devnet", DEVNET_FILE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["onchain_devnet"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_chain(log: Path) -> Iterator[str]:
    """A ganache node on 127.0.0.1 for the block; its URL."""
    devnet = devnet_module()
    why = devnet.tools_missing()
    if why is not None:
        missing(f"the local EVM chain cannot run: {why}")
    port = free_port()
    process = devnet.start_ganache(port, log=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except Exception:
            process.kill()
            process.wait(timeout=10)
