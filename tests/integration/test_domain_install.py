"""``pip install <project>`` without extras gives a working domain library and nothing of
the server: a fresh virtual environment, the project installed from a copy of its sources
(pip reaches PyPI for eventsourcing, pydantic and the build backend), then the code of
``docs/domain-library.md`` run in it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "domain-library.md"
SERVER_PACKAGES = (
    "sqlalchemy",
    "psycopg",
    "redis",
    "aio_pika",
    "starlette",
    "uvicorn",
    "dependency_injector",
    "httpx",
    "websockets",
    "pydantic_settings",
    "typer",
)
INSTALL_TIMEOUT = 600


@pytest.mark.slow
def test_a_plain_install_gives_the_domain_and_no_server(tmp_path: Path) -> None:
    # A copy of what a source distribution holds, so the build writes nothing in the tree.
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(
        ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = str(environment / "bin" / "python")

    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(project)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    probe = (
        "import importlib.util, json, importlib.metadata as m\n"
        "import defi_realtime.domain as d\n"
        f"present = [n for n in {list(SERVER_PACKAGES)!r} if importlib.util.find_spec(n)]\n"
        "meta = m.metadata('defi-realtime')\n"
        "print(json.dumps({'present': present, 'public': len(d.__all__),\n"
        "    'requires': [r for r in m.requires('defi-realtime') if 'extra ==' not in r],\n"
        "    'license': meta.get('License-Expression')}))\n"
    )
    facts = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert facts.returncode == 0, facts.stderr
    found = json.loads(facts.stdout)
    assert found["present"] == []  # none of the server's dependencies came along
    assert sorted(re.split(r"[<>=\[ ]", r)[0] for r in found["requires"]) == [
        "eventsourcing",
        "pydantic",
    ]
    assert found["public"] > 0
    assert found["license"] == "MIT"

    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2
    for index, code in enumerate(blocks):
        script = tmp_path / f"block_{index}.py"
        script.write_text(code)
        run = subprocess.run(
            [python, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert run.returncode == 0, (index, run.stderr)
    # The server's entry point is there but needs the `server` extra: it says so by failing.
    server = subprocess.run(
        [python, "-c", "import defi_realtime.entrypoints.cli"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert server.returncode != 0
    assert "ModuleNotFoundError" in server.stderr
