"""The production ``HotProjection``: current values and rankings in Redis.

Layout (every key under the adapter's prefix, ``dr:`` by default):

* ``position`` - the tracking position (string integer).
* ``protocol:<slug>`` - hash: listing, current readings (JSON), stored changes, position.
* ``tvl:<slug>`` - sorted set of recent total-TVL observations, score = observed_at.
* ``token:<token>`` - hash: current price, confidence, stored change, position.
* ``price:<token>`` - sorted set of recent prices, score = observed_at.
* ``tokens:recent`` - sorted set of tokens, score = -observed_at (newest first).
* ``rank:<desc|asc>:all``, ``rank:<dir>:chain:<chain>``, ``rank:<dir>:category:<category>``
  - sorted sets of slugs ranked by TVL; ``desc`` scores are ``-tvl`` and ``asc`` ones ``tvl``,
  and protocols without a TVL score ``+inf``. Two directions because Redis breaks score
  ties by member in ascending order only, and the contract wants None last and ties by
  slug ascending whichever way TVL sorts.

How a batch is applied: one pipelined read of the tracking position and every hash the
batch touches (plus, for series the batch extends, only the points the change windows
refer to); the shared fold (``hot_state``) computes the new states in Python; one Lua script
then compares-and-sets the position and writes everything, so the position and the state
it accounts for move together, exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, cast

from redis.asyncio import Redis

from ..application.log import LogBatch, LogEntry
from ..application.views import (
    CHANGE_WINDOWS,
    RECENT_WINDOW_SECONDS,
    Page,
    PriceView,
    ProtocolQuery,
    ProtocolView,
)
from .hot_state import (
    PRICE_CHANGE_WINDOW,
    PRICE_KIND,
    PROTOCOL_KINDS,
    TOTAL,
    Point,
    ProtocolState,
    Reading,
    TokenState,
    check_query,
    fold_entries,
    matches,
    order,
    page_of,
    pending,
)

_APPLY_BATCH: Final = """
-- Apply one log batch to the hot projection, exactly once.
--
-- Why a script: the tracking position and the state it accounts for must change together
-- or not at all, otherwise a crash or a second writer (a duplicate delivery, an overlapping
-- rebuild) could apply entries twice or skip them. The client computed the writes from a
-- snapshot taken at position ARGV[1]; if the position has moved since, that snapshot is
-- stale, so nothing is written and the client starts over from a fresh read.
--
-- KEYS[1]  the tracking position; KEYS[2..] the keys the writes touch
-- ARGV[1]  the position the snapshot was read at; ARGV[2] the batch's last position
-- ARGV[3]  JSON list of writes: [command, index into KEYS, arguments...]
local seen = redis.call('GET', KEYS[1]) or '0'
if seen ~= ARGV[1] then
  return {0, seen}
end

local writes = cjson.decode(ARGV[3])
-- Scripts are not rolled back on error: refuse a bad write before making any.
local allowed = {HSET = true, ZADD = true, ZREM = true, ZREMRANGEBYSCORE = true}
for _, write in ipairs(writes) do
  if not allowed[write[1]] or KEYS[write[2]] == nil then
    return redis.error_reply('hot projection: unexpected write ' .. cjson.encode(write))
  end
end
for _, write in ipairs(writes) do
  redis.call(write[1], KEYS[write[2]], unpack(write, 3))
end
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""

# A concurrent writer moving the position makes an attempt start over; give up eventually
# rather than spin if something keeps rewriting it.
_MAX_ATTEMPTS: Final = 8
_SCAN_COUNT: Final = 500


class RedisHotProjection:
    """``HotProjection`` in Redis (``redis.asyncio``), shared by every serving process.

    ``prefix`` namespaces every key, so several projections (or tests) can share a
    database and ``reset`` removes only this one's keys. The client may or may not decode
    responses.
    """

    def __init__(self, client: Redis, prefix: str = "dr:") -> None:
        self._client = client
        self._prefix = prefix
        self._apply_batch = client.register_script(_APPLY_BATCH)

    # --- writing -------------------------------------------------------------------------

    async def position(self) -> int:
        return _int(await self._client.get(self._position_key))

    async def apply(self, batch: LogBatch) -> bool:
        for _ in range(_MAX_ATTEMPTS):
            applied = await self._try_apply(batch)
            if applied is not None:
                return applied
        raise RuntimeError(
            f"hot projection {self._prefix!r}: the position kept moving under a concurrent writer"
        )

    async def _try_apply(self, batch: LogBatch) -> bool | None:
        """True/False as ``apply``; None when another writer got in first."""
        slugs = sorted({e.key for e in batch.entries if e.kind in PROTOCOL_KINDS})
        tokens = sorted({e.key for e in batch.entries if e.kind == PRICE_KIND})
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.get(self._position_key)
            for slug in slugs:
                pipe.hgetall(self._protocol_key(slug))
            for token in tokens:
                pipe.hgetall(self._token_key(token))
            replies = await pipe.execute()
        position = _int(replies[0])
        todo = pending(batch, position)
        if todo is None:
            return False

        protocols: dict[str, ProtocolState] = {}
        stored_changes: dict[str, dict[str, float | None]] = {}
        for slug, raw in zip(slugs, replies[1 : 1 + len(slugs)], strict=True):
            if raw:
                protocols[slug], stored_changes[slug] = _protocol_from_hash(slug, _decode(raw))
        token_states: dict[str, TokenState] = {}
        for token, raw in zip(tokens, replies[1 + len(slugs) :], strict=True):
            if raw:
                token_states[token] = _token_from_hash(token, _decode(raw))

        tvl_points = _points_by_key(todo.entries, _is_total_tvl, "value")
        price_points = _points_by_key(todo.entries, _is_price, "price")
        await self._load_references(protocols, token_states, tvl_points, price_points)

        changed_protocols, changed_tokens = fold_entries(todo.entries, protocols, token_states)
        writes = _Writes(self._position_key)
        for slug, state in changed_protocols.items():
            # Only a batch that extends the TVL history can move the changes; otherwise the
            # stored ones stand (the snapshot holds no history to recompute them from).
            changes = state.changes() if slug in tvl_points else stored_changes.get(slug, {})
            self._write_protocol(writes, protocols.get(slug), state, changes)
            if slug in tvl_points:
                self._write_history(writes, self._tvl_key(slug), tvl_points[slug], state)
        for token, token_state in changed_tokens.items():
            self._write_token(writes, token_state)
            self._write_history(
                writes, self._price_series_key(token), price_points[token], token_state
            )

        status, _ = await self._apply_batch(
            keys=writes.keys, args=[str(position), str(todo.last), json.dumps(writes.commands)]
        )
        return True if int(status) == 1 else None

    async def _load_references(
        self,
        protocols: dict[str, ProtocolState],
        tokens: dict[str, TokenState],
        tvl_points: Mapping[str, list[Point]],
        price_points: Mapping[str, list[Point]],
    ) -> None:
        """Load into the snapshot the stored history points the changes can refer to.

        A change compares with the point nearest to ``newest - window`` (``percent_change``)
        among those the trim keeps. That point is one of the two neighbours of the cutoff
        in the history after the batch: either a point of the batch, which the fold adds,
        or a stored neighbour, which this loads. So two points per window are enough, not
        the whole history (and they would also be enough for "the last point before").
        """
        lookups: list[tuple[str, str, float, float]] = []  # (kind, key, cutoff, floor)
        for slug, points in tvl_points.items():
            state = protocols.get(slug)
            tvl = None if state is None else state.tvl
            newest = _newest(points, None if tvl is None else tvl.observed_at)
            for window in CHANGE_WINDOWS.values():
                lookups.append(("tvl", slug, newest - window, newest - RECENT_WINDOW_SECONDS))
        for token, points in price_points.items():
            token_state = tokens.get(token)
            newest = _newest(points, None if token_state is None else token_state.observed_at)
            lookups.append(
                ("price", token, newest - PRICE_CHANGE_WINDOW, newest - RECENT_WINDOW_SECONDS)
            )
        if not lookups:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for kind, key, cutoff, floor in lookups:
                series = self._tvl_key(key) if kind == "tvl" else self._price_series_key(key)
                below, above = repr(cutoff), repr(max(cutoff, floor))
                pipe.zrange(series, below, repr(floor), desc=True, byscore=True, offset=0, num=1)
                pipe.zrange(series, above, "+inf", byscore=True, offset=0, num=1)
            replies = await pipe.execute()
        found: dict[tuple[str, str], set[Point]] = {}
        for (kind, key, _, _), below, above in zip(
            lookups, replies[::2], replies[1::2], strict=True
        ):
            found.setdefault((kind, key), set()).update(_point(m) for m in [*below, *above])
        for (kind, key), history in found.items():
            recent = tuple(sorted(history))
            if kind == "tvl" and key in protocols:
                protocols[key] = replace(protocols[key], recent=recent)
            elif kind == "price" and key in tokens:
                tokens[key] = replace(tokens[key], recent=recent)

    def _write_protocol(
        self,
        writes: _Writes,
        before: ProtocolState | None,
        state: ProtocolState,
        changes: Mapping[str, float | None],
    ) -> None:
        writes.add(
            "HSET",
            self._protocol_key(state.slug),
            "name",
            state.name,
            "category",
            state.category,
            "chains",
            json.dumps(list(state.chains)),
            "url",
            state.url,
            "current",
            json.dumps(
                [
                    [metric, chain, r.value, r.observed_at]
                    for (metric, chain), r in state.current.items()
                ]
            ),
            "changes",
            json.dumps(dict(changes)),
            "position",
            str(state.position),
        )
        tvl = state.tvl
        scores = {
            "desc": "inf" if tvl is None else repr(-tvl.value),
            "asc": "inf" if tvl is None else repr(tvl.value),
        }
        new_scopes = self._rank_scopes(state)
        old_scopes = set() if before is None else self._rank_scopes(before)
        for direction, score in scores.items():
            for scope in old_scopes - new_scopes:
                writes.add("ZREM", self._rank_key(direction, scope), state.slug)
            for scope in sorted(new_scopes):
                writes.add("ZADD", self._rank_key(direction, scope), score, state.slug)

    def _write_token(self, writes: _Writes, state: TokenState) -> None:
        writes.add(
            "HSET",
            self._token_key(state.token),
            "price",
            repr(state.price),
            "observed_at",
            repr(state.observed_at),
            "confidence",
            json.dumps(state.confidence),
            "change_24h",
            json.dumps(state.change_24h()),
            "position",
            str(state.position),
        )
        writes.add("ZADD", self._recent_tokens_key, repr(-state.observed_at), state.token)

    def _write_history(
        self, writes: _Writes, key: str, points: Sequence[Point], state: ProtocolState | TokenState
    ) -> None:
        """Record the batch's observations in order, then trim behind the newest one."""
        for observed_at, value in points:
            at = repr(observed_at)
            # One point per timestamp: the later-recorded observation replaces the earlier.
            writes.add("ZREMRANGEBYSCORE", key, at, at)
            writes.add("ZADD", key, at, _member((observed_at, value)))
        if isinstance(state, TokenState):
            newest = state.observed_at
        else:
            tvl = state.tvl
            if tvl is None:  # pragma: no cover - a total-TVL observation always sets one
                return
            newest = tvl.observed_at
        writes.add("ZREMRANGEBYSCORE", key, "-inf", f"({newest - RECENT_WINDOW_SECONDS!r}")

    # --- reading -------------------------------------------------------------------------

    async def list_protocols(self, query: ProtocolQuery) -> Page:
        check_query(query)
        if query.sort == "tvl" and (query.chain is None or query.category is None):
            return await self._ranked_page(query)
        slugs = await self._filtered_slugs(query)
        views = [view for view in await self._protocol_views(slugs) if matches(view, query)]
        ordered = order(views, query.sort, query.descending)
        return Page(
            items=page_of(ordered, query),
            total=len(ordered),
            limit=query.limit,
            offset=query.offset,
        )

    async def _ranked_page(self, query: ProtocolQuery) -> Page:
        """A TVL-sorted page straight from one ranking: Redis filters, sorts and pages."""
        direction = "desc" if query.descending else "asc"
        key = self._rank_key(direction, self._query_scope(query))
        low, high = _score_bounds(direction, query.min_tvl)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcount(key, low, high)
            if query.limit > 0:
                pipe.zrange(key, low, high, byscore=True, offset=query.offset, num=query.limit)
            replies = await pipe.execute()
        slugs = [_text(member) for member in replies[1]] if query.limit > 0 else []
        return Page(
            items=await self._protocol_views(slugs),
            total=int(replies[0]),
            limit=query.limit,
            offset=query.offset,
        )

    async def _filtered_slugs(self, query: ProtocolQuery) -> list[str]:
        """Slugs passing the query's filters (chain and category at once: intersected)."""
        low, high = _score_bounds("desc", query.min_tvl)
        if query.chain is not None and query.category is not None:
            # Both rankings hold the same score for a slug, so MIN just keeps it.
            members = cast(
                "list[tuple[bytes | str, float]]",
                await self._client.zinter(
                    [
                        self._rank_key("desc", _chain_scope(query.chain)),
                        self._rank_key("desc", _category_scope(query.category)),
                    ],
                    aggregate="MIN",
                    withscores=True,
                ),
            )
            limit = None if query.min_tvl is None else -query.min_tvl
            return [
                _text(member) for member, score in members if limit is None or float(score) <= limit
            ]
        key = self._rank_key("desc", self._query_scope(query))
        return [_text(m) for m in await self._client.zrange(key, low, high, byscore=True)]

    async def get_protocol(self, slug: str) -> ProtocolView | None:
        views = await self._protocol_views([slug])
        return views[0] if views else None

    async def get_protocols(self, slugs: Sequence[str]) -> list[ProtocolView]:
        return await self._protocol_views(slugs)

    async def _protocol_views(self, slugs: Sequence[str]) -> list[ProtocolView]:
        if not slugs:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for slug in slugs:
                pipe.hgetall(self._protocol_key(slug))
            replies = await pipe.execute()
        views = []
        for slug, raw in zip(slugs, replies, strict=True):
            if raw:
                state, changes = _protocol_from_hash(slug, _decode(raw))
                views.append(state.view(changes))
        return views

    async def prices(
        self, tokens: Sequence[str] | None = None, limit: int = 100
    ) -> list[PriceView]:
        if tokens is None:
            if limit <= 0:
                return []
            members = await self._client.zrange(self._recent_tokens_key, 0, limit - 1)
            tokens = [_text(member) for member in members]
        if not tokens:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for token in tokens:
                pipe.hgetall(self._token_key(token))
            replies = await pipe.execute()
        views = []
        for token, raw in zip(tokens, replies, strict=True):
            if raw:
                fields = _decode(raw)
                views.append(_token_from_hash(token, fields).view(json.loads(fields["change_24h"])))
        return views

    async def reset(self) -> None:
        batch: list[Any] = []
        async for key in self._client.scan_iter(
            match=_glob_escape(self._prefix) + "*", count=_SCAN_COUNT
        ):
            # MATCH is a glob; check the literal prefix too rather than trust the escaping.
            if _text(key).startswith(self._prefix):
                batch.append(key)
            if len(batch) >= _SCAN_COUNT:
                await self._client.unlink(*batch)
                batch = []
        if batch:
            await self._client.unlink(*batch)

    # --- keys ----------------------------------------------------------------------------

    @property
    def _position_key(self) -> str:
        return f"{self._prefix}position"

    @property
    def _recent_tokens_key(self) -> str:
        return f"{self._prefix}tokens:recent"

    def _protocol_key(self, slug: str) -> str:
        return f"{self._prefix}protocol:{slug}"

    def _tvl_key(self, slug: str) -> str:
        return f"{self._prefix}tvl:{slug}"

    def _token_key(self, token: str) -> str:
        return f"{self._prefix}token:{token}"

    def _price_series_key(self, token: str) -> str:
        return f"{self._prefix}price:{token}"

    def _rank_key(self, direction: str, scope: str) -> str:
        return f"{self._prefix}rank:{direction}:{scope}"

    @staticmethod
    def _rank_scopes(state: ProtocolState) -> set[str]:
        scopes = {_ALL, _category_scope(state.category)}
        scopes.update(_chain_scope(chain) for chain in state.index_chains())
        return scopes

    @staticmethod
    def _query_scope(query: ProtocolQuery) -> str:
        if query.chain is not None:
            return _chain_scope(query.chain)
        if query.category is not None:
            return _category_scope(query.category)
        return _ALL


class _Writes:
    """The writes of one batch, in the shape the apply script takes."""

    def __init__(self, position_key: str) -> None:
        self.keys: list[str] = [position_key]
        self._index: dict[str, int] = {position_key: 1}
        self.commands: list[list[str | int]] = []

    def add(self, command: str, key: str, *args: str) -> None:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)  # Lua counts KEYS from 1
        self.commands.append([command, index, *args])


_ALL: Final = "all"


def _chain_scope(chain: str) -> str:
    return f"chain:{chain}"


def _category_scope(category: str) -> str:
    # Category filters are case-insensitive, so one ranking serves every spelling.
    return f"category:{category.casefold()}"


def _is_total_tvl(entry: LogEntry) -> bool:
    return (
        entry.kind == "metric"
        and entry.data.get("metric") == "tvl"
        and str(entry.data.get("chain", TOTAL)) == TOTAL
    )


def _is_price(entry: LogEntry) -> bool:
    return entry.kind == PRICE_KIND


def _points_by_key(
    entries: Iterable[LogEntry], wanted: Callable[[LogEntry], bool], value_field: str
) -> dict[str, list[Point]]:
    points: dict[str, list[Point]] = {}
    for entry in entries:
        if wanted(entry):
            point = (float(entry.data["observed_at"]), float(entry.data[value_field]))
            points.setdefault(entry.key, []).append(point)
    return points


def _newest(points: Iterable[Point], current: float | None) -> float:
    return max([observed_at for observed_at, _ in points] + ([] if current is None else [current]))


def _member(point: Point) -> str:
    # The member carries the exact values (scores come back as rounded text); the timestamp
    # in it keeps members distinct when two observations share a value.
    return f"{point[0]!r}|{point[1]!r}"


def _point(member: object) -> Point:
    observed_at, value = _text(member).split("|")
    return float(observed_at), float(value)


def _score_bounds(direction: str, min_tvl: float | None) -> tuple[str, str]:
    """ZRANGE BYSCORE bounds selecting ``tvl >= min_tvl`` (or everything) in a ranking."""
    if min_tvl is None:
        return "-inf", "+inf"
    if direction == "desc":
        return "-inf", repr(-min_tvl)
    return repr(min_tvl), "(+inf"  # +inf is "no TVL": excluded by any minimum


def _protocol_from_hash(
    slug: str, fields: Mapping[str, str]
) -> tuple[ProtocolState, dict[str, float | None]]:
    current = {
        (str(metric), str(chain)): Reading(float(value), float(observed_at))
        for metric, chain, value, observed_at in json.loads(fields["current"])
    }
    state = ProtocolState(
        slug=slug,
        name=fields["name"],
        category=fields["category"],
        chains=tuple(json.loads(fields["chains"])),
        url=fields["url"],
        current=current,
        position=int(fields["position"]),
    )
    return state, json.loads(fields["changes"])


def _token_from_hash(token: str, fields: Mapping[str, str]) -> TokenState:
    confidence = json.loads(fields["confidence"])
    return TokenState(
        token=token,
        price=float(fields["price"]),
        observed_at=float(fields["observed_at"]),
        confidence=None if confidence is None else float(confidence),
        position=int(fields["position"]),
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a Redis string reply, got {value!r}")


def _decode(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in raw.items()}


def _int(value: bytes | str | None) -> int:
    return 0 if value is None else int(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
