"""The embedded ``HotProjection``: everything in process memory, no I/O."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from ..application.hot_state import (
    ProtocolState,
    TokenState,
    check_query,
    fold_entries,
    matches,
    order,
    page_of,
    pending,
)
from ..application.log import LogBatch
from ..application.views import Page, PriceView, ProtocolQuery, ProtocolView


class InMemoryHotProjection:
    """``HotProjection`` held in dictionaries: the default for a single process and tests.

    ``apply`` never awaits between reading and committing, so concurrent coroutines see a
    batch either fully applied (with its position) or not at all. Views are rendered once
    per change rather than per query, since reads far outnumber writes.
    """

    def __init__(self) -> None:
        self._position = 0
        self._protocols: dict[str, ProtocolState] = {}
        self._protocol_views: dict[str, ProtocolView] = {}
        self._tokens: dict[str, TokenState] = {}
        self._price_views: dict[str, PriceView] = {}

    async def position(self) -> int:
        return self._position

    async def apply(self, batch: LogBatch) -> bool:
        todo = pending(batch, self._position)
        if todo is None:
            return False
        # Fold first, commit after: a malformed entry raises before anything changed.
        protocols, tokens = fold_entries(todo.entries, self._protocols, self._tokens)
        protocol_views = {slug: state.view(state.changes()) for slug, state in protocols.items()}
        price_views = {token: state.view(state.change_24h()) for token, state in tokens.items()}
        self._protocols.update(protocols)
        self._protocol_views.update(protocol_views)
        self._tokens.update(tokens)
        self._price_views.update(price_views)
        self._position = todo.last
        return True

    async def list_protocols(self, query: ProtocolQuery) -> Page:
        check_query(query)
        selected = [view for view in self._protocol_views.values() if matches(view, query)]
        ordered = order(selected, query.sort, query.descending)
        return Page(
            items=page_of(ordered, query),
            total=len(ordered),
            limit=query.limit,
            offset=query.offset,
        )

    async def get_protocol(self, slug: str) -> ProtocolView | None:
        return self._protocol_views.get(slug)

    async def get_protocols(self, slugs: Sequence[str]) -> list[ProtocolView]:
        return [self._protocol_views[slug] for slug in slugs if slug in self._protocol_views]

    async def prices(
        self, tokens: Sequence[str] | None = None, limit: int = 100
    ) -> list[PriceView]:
        if tokens is not None:
            return [self._price_views[token] for token in tokens if token in self._price_views]
        return heapq.nsmallest(
            max(limit, 0),
            self._price_views.values(),
            key=lambda view: (-view.observed_at, view.token),
        )

    async def reset(self) -> None:
        self._position = 0
        self._protocols.clear()
        self._protocol_views.clear()
        self._tokens.clear()
        self._price_views.clear()
