"""``defi_realtime.domain`` as a library: its public API, and the code of
``docs/domain-library.md`` run as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import defi_realtime.domain as domain

DOC = Path(__file__).resolve().parents[2] / "docs" / "domain-library.md"
SERVER_MODULES = (
    "sqlalchemy",
    "psycopg",
    "redis",
    "aio_pika",
    "starlette",
    "uvicorn",
    "dependency_injector",
    "httpx",
    "defi_realtime.application",
    "defi_realtime.adapters",
    "defi_realtime.entrypoints",
)


def python_blocks() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    return blocks


def test_every_public_name_is_defined_in_the_domain() -> None:
    assert len(domain.__all__) == len(set(domain.__all__))
    for name in domain.__all__:
        value = getattr(domain, name)
        module = getattr(value, "__module__", None)
        if module is not None and isinstance(value, type):
            assert module.startswith("defi_realtime.domain."), (name, module)
    for aggregate in ("Protocol", "Token", "AlertRule", "Subscription", "ApiKey", "RuleBook"):
        assert aggregate in domain.__all__


def test_importing_the_domain_loads_no_server_code() -> None:
    probe = (
        "import json, sys, defi_realtime.domain\n"
        f"print(json.dumps([m for m in {list(SERVER_MODULES)!r} if m in sys.modules]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("index", [0, 1], ids=["aggregates", "risk-desk"])
def test_the_documents_code_runs(index: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(python_blocks()[index])
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expected = ["refused: value must be finite, got nan", "risk desk ok"][index]
    assert expected in result.stdout
