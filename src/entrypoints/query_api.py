"""``POST /v2/query``: aggregate queries over the protocols, now, at a cut or per bucket.

Answers are cached (``QueryCache``: Redis when configured, in-process otherwise) under the
query and the log position they were computed at: a new fact moves the position, so a cached
answer is never stale. "Now" answers come from the hot projection; cuts and buckets from
the history read model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from starlette.requests import Request
from starlette.responses import Response

from ..application.aggregate import (
    MAX_BUCKETS,
    AggregateQuery,
    BucketName,
    Group,
    Measure,
    aggregate,
    bucket_starts,
    buckets_of,
)
from ..application.time_travel import Cut, cut_of, protocols_at
from ..application.views import ALL_PROTOCOLS, ProtocolQuery
from .alerts_api import BodyReader
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.query import AggregateAnswer, AggregateBody, BucketAnswer, GroupAnswer, TopItem
from .validation import parse_body

__all__ = ["query_routes"]

AGGREGATE = Operation(
    "POST",
    "aggregateQuery",
    "Aggregate protocols: filter, group, measure, rank the top ones, per time bucket, as of",
    NoParameters,
    AggregateAnswer,
    access="read",
    body=AggregateBody,
    description="Groups by chain add up as DeFiLlama's chain TVL does (a protocol's own "
    "figure for the chain, or its total when it lists that chain alone). Answers are cached "
    "under the query and the log position.",
)


def _query_of(body: AggregateBody) -> AggregateQuery:
    filters = body.filters
    return AggregateQuery(
        chains=None if filters.chains is None else frozenset(filters.chains),
        categories=None if filters.categories is None else frozenset(filters.categories),
        protocols=None if filters.protocols is None else frozenset(filters.protocols),
        min_tvl=filters.min_tvl,
        group_by=body.group_by,
        measures=tuple(Measure(m.op, m.metric) for m in body.measures),
        top=None if body.top is None else body.top.n,
        top_by="tvl" if body.top is None else body.top.by,
        top_per_group=body.top is not None and body.top.per == "group",
    )


def _groups(groups: list[Group]) -> list[GroupAnswer]:
    return [
        GroupAnswer(
            key=group.key,
            protocols=group.protocols,
            measures=group.measures,
            top=[
                TopItem(
                    slug=item.slug,
                    tvl=item.values.get("tvl"),
                    volume_24h=item.values.get("volume_24h"),
                    fees_24h=item.values.get("fees_24h"),
                )
                for item in group.top
            ],
        )
        for group in groups
    ]


def _bucketed(
    node: Node, bucket: BucketName, start: float, end: float, query: AggregateQuery, cut: Cut
) -> AggregateAnswer:
    starts = bucket_starts(bucket, start, end)
    if len(starts) > MAX_BUCKETS:
        raise ApiError(
            400,
            "invalid_query",
            f"{len(starts)} buckets from start to end; at most {MAX_BUCKETS}",
            {"field": "bucket"},
        )
    answered = buckets_of(node.history, query, starts, end, cut)
    return AggregateAnswer(
        groups=None,
        buckets=[BucketAnswer(start=b.start, groups=_groups(b.groups)) for b in answered],
        position=0,
        asOf=cut.as_of,
        knownAt=cut.known_at,
        cached=False,
    )


def _at_cut(node: Node, query: AggregateQuery, cut: Cut) -> AggregateAnswer:
    return AggregateAnswer(
        groups=_groups(aggregate(protocols_at(node.history, cut), query)),
        buckets=None,
        position=0,
        asOf=cut.as_of,
        knownAt=cut.known_at,
        cached=False,
    )


def query_routes(read_json: BodyReader) -> list[OperationRoute]:
    """The route, with the API's JSON body reader (size limits)."""

    async def aggregate_query(request: Request, _: NoParameters) -> Response:
        body = parse_body(AggregateBody, await read_json(request), code="invalid_query")
        node: Node = request.app.state.node
        query = _query_of(body)
        history_side = body.bucket is not None or body.as_of is not None or body.known_at
        position = (
            await asyncio.to_thread(node.history.position)
            if history_side
            else await node.hot.position()
        )
        spelled = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
        key = hashlib.sha256(f"{position}:{spelled}".encode()).hexdigest()
        found = await node.query_cache.get(key)
        if found is not None:
            answer = AggregateAnswer.model_validate_json(found).model_copy(update={"cached": True})
            return json_answer(answer)
        if history_side:
            cut = await asyncio.to_thread(cut_of, node.history, body.as_of, body.known_at)
            bucket, start, end = body.bucket, body.start, body.end
            if bucket is not None and start is not None and end is not None:
                answer = await asyncio.to_thread(_bucketed, node, bucket, start, end, query, cut)
            else:
                answer = await asyncio.to_thread(_at_cut, node, query, cut)
        else:
            page = await node.hot.list_protocols(ProtocolQuery(limit=ALL_PROTOCOLS))
            answer = AggregateAnswer(
                groups=_groups(aggregate(page.items, query)),
                buckets=None,
                position=0,
                asOf=None,
                knownAt=None,
                cached=False,
            )
        answer = answer.model_copy(update={"position": position})
        await node.query_cache.put(key, answer.model_dump_json().encode())
        return json_answer(answer)

    return [OperationRoute("/v2/query", AGGREGATE.serve(aggregate_query))]
