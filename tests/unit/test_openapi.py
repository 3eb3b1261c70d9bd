"""The OpenAPI document is generated from the operations the routes are built from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from defi_realtime.application.ingest import LISTING_FIELDS, OBSERVATION_FIELDS, PRICE_FIELDS
from defi_realtime.domain.protocol import SLUG_PATTERN
from defi_realtime.domain.token import TOKEN_ID_PATTERN
from defi_realtime.entrypoints.api import create_app
from defi_realtime.entrypoints.openapi import documented_operations, openapi_document
from defi_realtime.entrypoints.operations import Operation, OperationRoute
from defi_realtime.entrypoints.schemas.common import NoParameters
from defi_realtime.entrypoints.schemas.ingest import Listing, Observation, Price
from defi_realtime.entrypoints.schemas.protocols import ProtocolPath
from defi_realtime.entrypoints.settings import Settings


@pytest.fixture
def routes(tmp_path: Path) -> list[Any]:
    return list(create_app(Settings(data_dir=tmp_path / "data")).routes)


@pytest.fixture
def document(routes: list[Any]) -> dict[str, Any]:
    return openapi_document(routes)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


def test_every_http_route_is_built_from_its_operations(routes: list[Any]) -> None:
    http = [route for route in routes if isinstance(route, Route)]
    assert len(http) >= 15
    for route in http:
        assert isinstance(route, OperationRoute), route.path
        served = set(route.methods or ()) - {"HEAD"}
        assert served == {operation.method for operation in route.operations}, route.path


async def _handler(request: Request, query: NoParameters) -> Response:
    return Response()


def test_a_route_without_an_operation_cannot_be_documented() -> None:
    with pytest.raises(ValueError, match="has no operation"):
        documented_operations([Route("/undocumented", _handler)])


def test_an_operation_must_name_the_routes_path_parameters() -> None:
    operation = Operation("GET", "getThing", "A thing", NoParameters, NoParameters)
    with pytest.raises(ValueError, match="path parameters"):
        OperationRoute("/things/{slug:str}", operation.serve(_handler))
    with pytest.raises(ValueError, match="path parameters"):
        OperationRoute(
            "/things",
            Operation("GET", "x", "x", NoParameters, NoParameters, path=ProtocolPath).serve(
                _handler
            ),
        )


def test_operation_ids_are_unique() -> None:
    one = Operation("GET", "same", "A", NoParameters, NoParameters).serve(_handler)
    two = Operation("POST", "same", "B", NoParameters, NoParameters).serve(_handler)
    with pytest.raises(ValueError, match="not unique"):
        documented_operations([OperationRoute("/a", one), OperationRoute("/b", two)])


def test_every_operation_is_described(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids)) >= 19
    for path, method, operation in _operations(document):
        assert operation["summary"], (path, method)
        responses = operation["responses"]
        assert "200" in responses, (path, method)
        # Every operation refuses unknown query parameters (400) and keys that are not live.
        assert {"400", "401", "414"} <= set(responses), (path, method)
        for status, response in responses.items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
        for parameter in operation.get("parameters", ()):
            assert parameter["in"] in ("path", "query")
            assert parameter["required"] is (parameter["in"] == "path")
            assert "null" not in str(parameter["schema"]), (path, parameter)
        body = operation.get("requestBody")
        if body is not None:
            ref = body["content"]["application/json"]["schema"]["$ref"]
            assert ref.rsplit("/", 1)[-1] in document["components"]["schemas"]


def test_path_parameters_are_documented_where_the_routes_have_them(
    document: dict[str, Any],
) -> None:
    for path, method, operation in _operations(document):
        named = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
        assert named == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (
            path,
            method,
        )


def test_key_protected_operations_declare_the_key(tmp_path: Path) -> None:
    routes = list(create_app(Settings(data_dir=tmp_path / "data")).routes)
    open_reads = openapi_document(routes)
    scheme = open_reads["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    # The same key, or a session token, as Authorization: Bearer.
    bearer = open_reads["components"]["securitySchemes"]["Bearer"]
    assert bearer == {"type": "http", "scheme": "bearer"}
    key = [{"ApiKey": []}, {"Bearer": []}]
    by_id = {op["operationId"]: op for _, _, op in _operations(open_reads)}
    for operation_id in (
        "ingest",
        "createAlertRule",
        "listAlertRules",
        "getAlertHistory",
        "createSessionToken",
    ):
        assert by_id[operation_id]["security"] == key, operation_id
    # Reads of market data: anyone, or a key (which must then be live).
    assert by_id["listProtocols"]["security"] == [{}, *key]
    assert "security" not in by_id["getHealth"]
    keyed_reads = openapi_document(routes, require_key_for_reads=True)
    by_id = {op["operationId"]: op for _, _, op in _operations(keyed_reads)}
    assert by_id["listProtocols"]["security"] == key
    assert by_id["getRealtimePrices"]["security"] == key
    assert "security" not in by_id["getHealth"]


def _patterns(schema: Any, name: str | None = None) -> Iterator[tuple[str | None, Any]]:
    """Every (property or parameter name, pattern) pair in a schema tree."""
    if isinstance(schema, dict):
        if "pattern" in schema:
            yield name, schema["pattern"]
        for key, value in schema.items():
            if key == "properties":
                for prop, sub in value.items():
                    yield from _patterns(sub, prop)
            elif key == "parameters":
                for parameter in value:
                    yield from _patterns(parameter["schema"], parameter["name"])
            elif key not in ("pattern",):
                yield from _patterns(value, name)
    elif isinstance(schema, list):
        for item in schema:
            yield from _patterns(item, name)


def test_the_slug_and_token_id_rules_are_stated_wherever_one_appears(
    document: dict[str, Any],
) -> None:
    found = set(_patterns(document))
    slugs = {"slug", "protocol", "protocolIds"}
    tokens = {"token", "tokens", "tokenIds"}
    for name in slugs:
        assert (name, SLUG_PATTERN) in found, name
    for name in tokens:
        assert (name, TOKEN_ID_PATTERN) in found, name
    # Wherever such a name has a pattern, it is the domain's.
    for name, pattern in found:
        if name in slugs:
            assert pattern == SLUG_PATTERN, name
        if name in tokens:
            assert pattern == TOKEN_ID_PATTERN, name
    # ... and the schemas naming one always state it.
    schemas = document["components"]["schemas"]
    for model, field, pattern in (
        ("Protocol", "slug", SLUG_PATTERN),
        ("MetricSeries", "slug", SLUG_PATTERN),
        ("TvlEntry", "id", SLUG_PATTERN),
        ("VolumeEntry", "id", SLUG_PATTERN),
        ("Observation", "protocol", SLUG_PATTERN),
        ("Listing", "protocol", SLUG_PATTERN),
        ("ProtocolTarget", "protocol", SLUG_PATTERN),
        ("Price", "token", TOKEN_ID_PATTERN),
        ("PriceEntry", "token", TOKEN_ID_PATTERN),
        ("TokenTarget", "token", TOKEN_ID_PATTERN),
    ):
        assert schemas[model]["properties"][field]["pattern"] == pattern, (model, field)


@pytest.mark.parametrize(
    ("model", "fields"),
    [(Observation, OBSERVATION_FIELDS), (Price, PRICE_FIELDS), (Listing, LISTING_FIELDS)],
)
def test_the_ingest_item_schemas_name_the_fields_build_batch_reads(
    model: type[BaseModel], fields: frozenset[str]
) -> None:
    # The item models document build_batch's validation (they do not run on the hot path):
    # the fields they name are the fields it accepts.
    assert set(model.model_fields) == fields
