"""The deploy folder agrees with the code, checked without Docker.

Every variable a defi-realtime service of ``deploy/compose.yaml`` sets is a setting
(``src/entrypoints/settings.py``) and its value one the settings accept; every command is a
CLI command that parses, every ``worker`` a role of the role table; dependencies name
services that have the health check their condition waits for; ``.env.example`` holds the
variables the file needs and no others; the Dockerfile's defaults are settings too; the
proxy sends to the API services. ``docker compose config`` (in ``.ci/run`` where Docker has
the compose plugin) checks the file against the compose specification itself.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from starlette.routing import BaseRoute, Route

from defi_realtime.entrypoints.api import create_app
from defi_realtime.entrypoints.cli import cli
from defi_realtime.entrypoints.roles import WORKERS
from defi_realtime.entrypoints.settings import Settings
from tests.deploy_compose import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    DOCKERFILE,
    ENV_EXAMPLE,
    AppService,
    MissingVariable,
    app_services,
    example_variables,
    interpolate,
    load_compose,
)

SETTINGS = {field.alias for field in Settings.model_fields.values() if field.alias}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(document: dict[str, Any]) -> list[AppService]:
    return app_services(document)


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("a${SET}b$SET$$SET", variables) == "axbx$SET"
    # ":-" also replaces an empty value, "-" only an unset one.
    assert interpolate("${EMPTY:-d}|${EMPTY-d}|${UNSET-d}|${UNSET:-d}", variables) == "d||d|d"
    assert interpolate("${SET:?never}", variables) == "x"
    with pytest.raises(MissingVariable, match="NEEDED: say so"):
        interpolate("${NEEDED:?say so}", variables)
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?empty is unset}", variables)


def test_the_topology_has_the_services_and_the_roles(services: list[AppService]) -> None:
    commands = [service.command for service in services]
    assert commands.count(("serve",)) == 2, commands
    # Every worker role runs somewhere; `notifications` must (serve skips it with AMQP_URL).
    assert sorted(command[1] for command in commands if command[0] == "worker") == sorted(WORKERS)


def test_every_variable_is_a_setting_with_a_valid_value(services: list[AppService]) -> None:
    for service in services:
        unknown = set(service.environment) - SETTINGS
        assert not unknown, f"{service.name} sets {unknown}, which are not settings"
        settings = Settings.model_validate(service.environment)
        # Production adapters: PostgreSQL, Redis and RabbitMQ on their compose services.
        assert settings.event_store_env["POSTGRES_HOST"] == "postgres", service.name
        assert settings.history_url.startswith("postgresql+psycopg://"), service.name
        assert (settings.hot_backend, settings.fanout_backend) == ("redis", "rabbitmq")


def test_every_command_is_a_cli_command_that_parses(services: list[AppService]) -> None:
    group: Any = typer.main.get_command(cli)  # typer's own (vendored) click group
    for service in services:
        name, *arguments = service.command
        command = group.commands.get(name)
        assert command is not None, f"{service.name}: no CLI command {name!r}"
        with command.make_context(name, list(arguments)) as context:
            if name == "worker":
                assert context.params["role"] in WORKERS, service.name


def _healthchecked(document: dict[str, Any], name: str) -> bool:
    service = document["services"][name]
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable", False) and bool(check.get("test"))
    # No healthcheck of its own: the image's (our Dockerfile has one).
    return name in {s.name for s in app_services(document)}


def test_dependencies_wait_for_health_checks_that_exist(document: dict[str, Any]) -> None:
    names = set(document["services"])
    for name, service in document["services"].items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in names, f"{name} depends on unknown {dependency}"
            if condition.get("condition") == "service_healthy":
                assert _healthchecked(document, dependency), f"{name} -> {dependency}"


def test_app_services_wait_for_their_backing_services(services: list[AppService]) -> None:
    for service in services:
        depends = service.definition.get("depends_on") or {}
        for backing in ("postgres", "redis", "rabbitmq"):
            assert depends.get(backing) == {"condition": "service_healthy"}, service.name


def test_workers_disable_the_http_health_check(services: list[AppService]) -> None:
    for service in services:
        check = service.definition.get("healthcheck")
        if service.serves_http:
            assert check is None, f"{service.name} should use the image's health check"
        else:
            assert check == {"disable": True}, f"{service.name} serves no HTTP"


def test_env_example_has_what_the_file_needs_and_nothing_else() -> None:
    text = COMPOSE_FILE.read_text()
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    offered = set(example_variables())
    assert referenced == offered, {
        "missing from .env.example": referenced - offered,
        "unused in compose.yaml": offered - referenced,
    }
    # Without a .env, the required secrets stop `docker compose` with a message.
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"} <= required
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        load_compose({})


def _dockerfile_instructions() -> list[tuple[str, str]]:
    # Join continuation lines, drop comments.
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in logical.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    starts = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(starts) >= 2, "multi-stage: a build stage and a runtime stage"
    return instructions[starts[-1] :]


def test_dockerfile_runtime_is_non_root_serves_and_keeps_data_on_a_volume() -> None:
    stage = _runtime_stage()
    values = dict(stage)
    assert values["USER"].split(":")[0] not in ("root", "0")
    assert values["ENTRYPOINT"] == '["defi-realtime"]'
    assert values["CMD"] == '["serve"]'
    env = dict(
        pair.split("=", 1) for keyword, rest in stage if keyword == "ENV" for pair in rest.split()
    )
    assert {"HOST", "PORT", "DATA_DIR"} <= set(env)
    assert Settings.model_validate({k: v for k, v in env.items() if k in SETTINGS})
    assert values["VOLUME"] == f'["{env["DATA_DIR"]}"]'
    # The runtime installs the wheels the build stage made, offline.
    assert "--no-index" in values["RUN"]
    assert "from=build" in values["RUN"]


def _healthcheck_path() -> str:
    [check] = [rest for keyword, rest in _runtime_stage() if keyword == "HEALTHCHECK"]
    match = re.search(r"http://127\.0\.0\.1:%s(/[^'\"]*)", check)
    assert match, check
    return match[1]


def _paths(routes: list[BaseRoute]) -> set[str]:
    return {route.path for route in routes if isinstance(route, Route)}


def test_the_image_health_check_asks_a_route_the_api_has(tmp_path: Path) -> None:
    app = create_app(Settings(DATA_DIR=tmp_path / "data"))
    assert _healthcheck_path() in _paths(list(app.routes))


def test_the_image_health_check_asks_for_liveness() -> None:
    assert _healthcheck_path() == "/health/live"


def test_the_proxy_sends_to_the_api_services(services: list[AppService]) -> None:
    config = (DEPLOY_DIR / "nginx.conf").read_text()
    upstream = re.search(r"upstream defi_realtime \{(.*?)\}", config, re.S)
    assert upstream, config
    servers = set(re.findall(r"server (\S+?):(\d+)", upstream[1]))
    port = str(Settings.model_validate({"PORT": "8000"}).port)
    assert servers == {(s.name, port) for s in services if s.serves_http}
    # WebSockets go through: the upgrade headers are passed on for /v2/realtime.
    assert "proxy_set_header Upgrade $http_upgrade;" in config


def test_env_example_is_next_to_the_compose_file() -> None:
    # docker compose reads `.env` from the compose file's folder (the project directory).
    assert ENV_EXAMPLE.parent == COMPOSE_FILE.parent == DEPLOY_DIR


def _scrape_targets() -> set[tuple[str, str]]:
    config = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text())
    return {
        tuple(target.rsplit(":", 1))
        for job in config["scrape_configs"]
        if job["job_name"].startswith("defi-realtime")
        for group in job["static_configs"]
        for target in group["targets"]
    }


def _metrics_port(service: AppService) -> str | None:
    """Where the service serves /metrics: the API port for ``serve``, ``--metrics-port`` for
    a worker (none without it)."""
    if service.serves_http:
        return str(Settings.model_validate({"PORT": "8000"}).port)
    arguments = list(service.command)
    if "--metrics-port" in arguments:
        return arguments[arguments.index("--metrics-port") + 1]
    return None


def test_prometheus_scrapes_every_app_service_where_it_serves_metrics(
    services: list[AppService],
) -> None:
    served = {(service.name, _metrics_port(service)) for service in services}
    assert all(port is not None for _, port in served), served
    assert _scrape_targets() == served
