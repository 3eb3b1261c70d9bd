"""REST operations: what each route serves, declared once for the router and the document.

An ``Operation`` names a method's query, path, body and answer models, the errors it can
answer and who may call it. ``OperationRoute`` is the Starlette ``Route`` of one path,
built from its operations and their handlers: the route serves exactly the methods its
operations declare, checks access and parses the query with the declared models before a
handler runs, and the OpenAPI document (``openapi.py``) is generated from the same
operations, so the document and the behaviour cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .auth import require_key
from .settings import Settings
from .validation import parse_query

__all__ = ["Access", "Operation", "OperationRoute", "Served", "Text", "json_answer"]

Q = TypeVar("Q", bound=BaseModel)
Method = Literal["GET", "POST", "PUT", "DELETE"]
Access = Literal["open", "read", "key"]
"""``open``: anyone; ``read``: public market data, open unless ``REQUIRE_KEY_FOR_READS``;
``key``: an API key is always needed. A presented key that is not live is refused (401)
on every operation (``auth.py``)."""


@dataclass(frozen=True, slots=True)
class Text:
    """A non-JSON answer (Prometheus' exposition format)."""

    media_type: str


@dataclass(frozen=True, slots=True)
class Operation(Generic[Q]):
    """One method on one path, as its models describe it."""

    method: Method
    operation_id: str
    summary: str
    query: type[Q]
    ok: type[BaseModel] | Text
    """The 200 answer."""
    access: Access = "open"
    path: type[BaseModel] | None = None
    """The path parameters (fields named as in the route's path)."""
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    """The 4xx it can answer beside 400 (a bad parameter) and 401 (a key not live), each
    with the ``Error`` shape."""
    also: tuple[tuple[int, type[BaseModel]], ...] = ()
    """Other answers with their own model (``/health``'s 503)."""
    description: str = ""

    def serve(self, handler: Callable[[Request, Q], Awaitable[Response]]) -> Served[Q]:
        """This operation answered by ``handler`` (given the request and its parsed query)."""
        return Served(self, handler)


@dataclass(frozen=True, slots=True)
class Served(Generic[Q]):
    """An operation and the handler that answers it."""

    operation: Operation[Q]
    handler: Callable[[Request, Q], Awaitable[Response]]

    async def __call__(self, request: Request) -> Response:
        _authorize(self.operation.access, request)
        query = parse_query(self.operation.query, request.query_params)
        return await self.handler(request, query)


def _authorize(access: Access, request: Request) -> None:
    if access == "key":
        require_key(request)
    elif access == "read":
        settings: Settings = request.app.state.settings
        if settings.require_key_for_reads:
            require_key(request)


class OperationRoute(Route):
    """The route of one path: its methods are its operations'."""

    def __init__(self, path: str, *served: Served[Any]) -> None:
        by_method: dict[str, Served[Any]] = {}
        for one in served:
            if one.operation.method in by_method:
                raise ValueError(f"{path}: two operations for {one.operation.method}")
            by_method[one.operation.method] = one

        async def endpoint(request: Request) -> Response:
            # Starlette serves HEAD wherever GET is served.
            return await by_method["GET" if request.method == "HEAD" else request.method](request)

        endpoint.__name__ = endpoint.__qualname__ = "_".join(
            one.operation.operation_id for one in served
        )
        super().__init__(path, endpoint, methods=list(by_method))
        self.operations: tuple[Operation[Any], ...] = tuple(one.operation for one in served)
        declared = set(self.param_convertors)
        for operation in self.operations:
            fields = set() if operation.path is None else set(operation.path.model_fields)
            if fields != declared:
                raise ValueError(
                    f"{operation.operation_id}: path parameters {sorted(fields)} do not match "
                    f"the route {path!r}"
                )


def json_answer(answer: BaseModel, status: int = 200) -> Response:
    """``answer`` as the JSON body of a response (field aliases, as documented)."""
    return Response(
        answer.model_dump_json(by_alias=True), status_code=status, media_type="application/json"
    )
