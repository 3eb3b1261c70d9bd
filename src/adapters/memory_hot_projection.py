"""The embedded ``HotProjection``: a ``HotState`` in process memory, no I/O."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from ..application.hot_state import (
    HotState,
    ProtocolState,
    TokenState,
    check_query,
    matches,
    order,
    page_of,
)
from ..application.log import LogBatch
from ..application.views import Page, PriceView, ProtocolQuery, ProtocolView


class InMemoryHotProjection:
    """``HotProjection`` over a ``HotState``: the default for a single process and tests.

    A serving node shares its ``HotState`` with the realtime hub (the facts of live frames):
    one fold of the log per node, not two.
    """

    def __init__(self, state: HotState | None = None) -> None:
        self.state = state if state is not None else HotState()

    async def position(self) -> int:
        return self.state.position

    async def apply(self, batch: LogBatch) -> bool:
        return self.state.apply(batch)

    async def list_protocols(self, query: ProtocolQuery) -> Page:
        check_query(query)
        selected = [view for view in self.state.protocol_views.values() if matches(view, query)]
        ordered = order(selected, query.sort, query.descending, query.chain)
        return Page(
            items=page_of(ordered, query),
            total=len(ordered),
            limit=query.limit,
            offset=query.offset,
        )

    async def get_protocol(self, slug: str) -> ProtocolView | None:
        return self.state.protocol_views.get(slug)

    async def get_protocols(self, slugs: Sequence[str]) -> list[ProtocolView]:
        views = self.state.protocol_views
        return [views[slug] for slug in slugs if slug in views]

    async def prices(
        self, tokens: Sequence[str] | None = None, limit: int = 100
    ) -> list[PriceView]:
        views = self.state.price_views
        if tokens is not None:
            return [views[token] for token in tokens if token in views]
        return heapq.nsmallest(
            max(limit, 0), views.values(), key=lambda view: (-view.observed_at, view.token)
        )

    async def reset(self) -> None:
        self.state.reset()

    async def restore(
        self,
        position: int,
        protocols: Mapping[str, ProtocolState | None],
        tokens: Mapping[str, TokenState | None],
    ) -> bool:
        state = self.state
        if state.position != position:
            return False
        # No suspension point from here on: readers see the keys before or after, whole.
        for slug, protocol in protocols.items():
            if protocol is None:
                state.protocols.pop(slug, None)
                state.protocol_views.pop(slug, None)
            else:
                state.protocols[slug] = protocol
                state.protocol_views[slug] = protocol.view(protocol.changes())
        for token, token_state in tokens.items():
            if token_state is None:
                state.tokens.pop(token, None)
                state.price_views.pop(token, None)
            else:
                state.tokens[token] = token_state
                state.price_views[token] = token_state.view(token_state.change_24h())
        return True
