"""Reading ``deploy/compose.yaml`` the way ``docker compose`` does, without Docker.

Used by the compose checks (``tests/unit/test_deploy_compose.py``) and by the test that runs
the same topology as processes (``tests/integration/test_deploy_topology.py``). Compose's
variable interpolation (``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``,
``${NAME:?message}``, ``$$``) is applied from ``deploy/.env.example``, the file an operator
copies to ``deploy/.env``; YAML merge keys (``<<: *app``) are resolved by PyYAML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "compose.yaml"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, $NAME, and $$.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A ``${NAME:?message}`` whose variable is unset (or empty, with ``:``)."""


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with compose's variable references replaced from ``variables``."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        value = variables.get(name)
        op, arg = match["op"], match["arg"] or ""
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def example_variables() -> dict[str, str]:
    """The variables of ``deploy/.env.example`` (every one has a value, maybe empty)."""
    return {name: value or "" for name, value in dotenv_values(ENV_EXAMPLE).items()}


def _interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolated(value, variables) for key, value in node.items()}
    return node


def load_compose(variables: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as a mapping, merge keys resolved, variables interpolated (from
    ``.env.example`` unless ``variables`` are given). ``x-`` extension fields are dropped,
    as compose ignores them."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    document: dict[str, Any] = _interpolated(
        raw, example_variables() if variables is None else variables
    )
    return {key: value for key, value in document.items() if not key.startswith("x-")}


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list form) as strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


@dataclass(frozen=True)
class AppService:
    """A compose service that runs the defi-realtime image: its CLI arguments and settings."""

    name: str
    command: tuple[str, ...]
    environment: dict[str, str]
    definition: dict[str, Any]

    @property
    def serves_http(self) -> bool:
        return self.command[:1] == ("serve",)


def builds_our_image(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    if isinstance(build, dict):
        return str(build.get("dockerfile", "")).endswith("deploy/Dockerfile")
    return False


def app_services(document: Mapping[str, Any]) -> list[AppService]:
    """The services built from ``deploy/Dockerfile``, in file order. A missing ``command``
    is the image's default, ``serve`` (the Dockerfile's CMD)."""
    found = []
    for name, service in document["services"].items():
        if not builds_our_image(service):
            continue
        command = service.get("command", ["serve"])
        if isinstance(command, str):
            command = command.split()
        found.append(AppService(name, tuple(command), environment_of(service), service))
    return found
