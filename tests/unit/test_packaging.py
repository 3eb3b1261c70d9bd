"""The distribution must not shadow popular top-level packages (ADR 0001)."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import defi_realtime

SRC = Path(defi_realtime.__file__).parent


def test_import_entrypoints_gives_the_pypi_package() -> None:
    # `entrypoints` (PyPI) is installed by our dev extras; our entrypoints live at
    # defi_realtime.entrypoints and must not take its place.
    entrypoints = importlib.import_module("entrypoints")
    assert hasattr(entrypoints, "EntryPoint"), entrypoints.__file__
    assert Path(entrypoints.__file__).resolve().parent != SRC.resolve()
    ours = importlib.import_module("defi_realtime.entrypoints")
    assert ours is not entrypoints
    assert Path(ours.__file__).resolve().parent == (SRC / "entrypoints").resolve()


def test_the_distribution_installs_one_top_level_package() -> None:
    top_level = importlib.metadata.distribution("defi-realtime").read_text("top_level.txt")
    assert top_level is not None
    assert top_level.split() == ["defi_realtime"]


def test_generic_names_do_not_resolve_into_our_source() -> None:
    for name in ("adapters", "domain", "application"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin).resolve()
        assert SRC.resolve() not in origin.parents, f"{name} resolves into our source: {origin}"


ALLOWED_DOMAIN_IMPORTS = {"eventsourcing.domain", "pydantic"}


def test_domain_imports_only_stdlib_eventsourcing_domain_and_pydantic() -> None:
    """Finer than import-linter can say: eventsourcing.domain yes, the rest of it no."""
    offenders = []
    for path in (SRC / "domain").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if module in ALLOWED_DOMAIN_IMPORTS or top == "pydantic":
                    continue
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_every_package_of_the_source_is_distributed() -> None:
    """pyproject.toml lists the packages by hand (ADR 0001): a new subpackage that is not
    listed works in an editable install and is missing from the wheel."""
    import tomllib

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("defi_realtime", *path.parent.relative_to(SRC).parts))
        for path in SRC.rglob("__init__.py")
        if "migrations" not in path.parts
    }
    assert found - listed == set()


def test_every_data_file_of_the_source_is_distributed() -> None:
    """A data file (the chain list, the first-run sample, migrations) that no package-data
    pattern names is found in an editable install and missing from the wheel."""
    import fnmatch
    import tomllib

    pyproject = tomllib.loads((SRC.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]
    missing = []
    for path in SRC.rglob("*"):
        if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(SRC)
        covered = False
        for package, globs in patterns.items():
            base = Path(*package.split(".")[1:])
            if base in relative.parents or base == Path():
                inside = relative.relative_to(base).as_posix()
                covered = covered or any(fnmatch.fnmatch(inside, glob) for glob in globs)
        if not covered:
            missing.append(str(relative))
    assert missing == []


def test_the_first_run_sample_is_small_real_data() -> None:
    from defi_realtime.entrypoints.first_run import SAMPLE_FILES

    sizes = [path.stat().st_size for path in SAMPLE_FILES]
    assert all(sizes)
    assert sum(sizes) < 1_500_000  # "well under 2 MB"


def test_the_core_is_the_domain_library_and_extras_add_the_rest() -> None:
    """``pip install defi-realtime`` is the domain library (eventsourcing + pydantic); the
    server and the client are extras; ``dev`` (what ``make install`` installs) has both."""
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text())["project"]
    core = sorted(r.split(">")[0].split("[")[0] for r in project["dependencies"])
    assert core == ["eventsourcing", "pydantic"]
    extras = project["optional-dependencies"]
    assert {"server", "client", "smart-money", "dev"} <= set(extras)
    assert "defi-realtime[server,client,smart-money]" in extras["dev"]
    # Training a smart-money model needs scikit-learn; the server scores without it.
    assert any(r.startswith("scikit-learn") for r in extras["smart-money"])
    assert not any(r.startswith("scikit-learn") for r in extras["server"])
    for needed in ("starlette", "uvicorn", "sqlalchemy", "psycopg", "redis", "aio-pika"):
        assert any(r.startswith(needed) for r in extras["server"]), needed
    for needed in ("httpx", "websockets", "tenacity"):
        assert any(r.startswith(needed) for r in extras["client"]), needed
    assert project["license"] == "MIT"
    assert (SRC.parent / "LICENSE").is_file()
    assert "Programming Language :: Python :: 3.11" in project["classifiers"]
