"""The production ``HotProjection``: current values and rankings in Redis.

Layout (every key under the adapter's prefix, ``dr:`` by default):

* ``position`` - the tracking position (string integer).
* ``layout`` - the version of this layout (``_LAYOUT``), written with every batch.
* ``protocol:<slug>`` - string: JSON of the listing, current readings, stored changes and
  position (``_protocol_json``).
* ``tvl:<slug>`` - sorted set of recent total-TVL observations, score = observed_at.
* ``flow:<metric>:<slug>`` - the same for the total ``volume_24h`` and ``fees_24h``, for
  their own changes (absent for data applied before they existed: their changes stay null
  until the projection is rebuilt or a week of new figures came in).
* ``token:<token>`` - string: JSON of the current price, confidence, stored change and
  position (``_token_json``).
* ``price:<token>`` - sorted set of recent prices, score = observed_at.
* ``tokens:recent`` - sorted set of tokens, score = -observed_at (newest first).
* ``rank:<desc|asc>:all``, ``rank:<dir>:chain:<chain>``, ``rank:<dir>:category:<category>``
  - sorted sets of slugs ranked by TVL; ``desc`` scores are ``-tvl`` and ``asc`` ones ``tvl``,
  and protocols without a TVL score ``+inf``. Two directions because Redis breaks score
  ties by member in ascending order only, and the contract wants None last and ties by
  slug ascending whichever way TVL sorts.

How a batch is applied, in three commands whatever its size: one ``MGET`` of the tracking
position and the state of every protocol and token the batch touches; one read-only script
fetching, for the series the batch extends, only the stored points the change windows can
refer to; then, after the shared fold (``hot_state``) computed the new states in Python, one
script that compares-and-sets the position and writes everything, so the position and the
state it accounts for move together, exactly once.

Why it looks like this (bench/bench_projections.py, docs/benchmarks.md): the cost of a
batch is dominated by the client, not by Redis. redis-py parses replies in Python, so every
command and every reply element costs microseconds: states used to be hashes of seven
fields read with one ``HGETALL`` each, and the reference points two ``ZRANGE``s per window,
~40 commands and ~100 reply elements per protocol and batch. One JSON string per state and
one reply string for all reference points make the reads a few elements per protocol. In
the apply script, ``redis.call`` is the cost: rankings get one variadic ``ZADD`` per key and
batch (``_Writes.add_grouped``), and a protocol whose TVL and scopes did not move is not
re-ranked at all.

Changing the layout: ``layout`` lets a newer adapter refuse keys an older one wrote (they
would be misread); ``reset()`` them or use a new prefix, and the projection rebuilds from
the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

from redis.asyncio import Redis

from ..application.chain_tvl import tvl_by_chain
from ..application.hot_state import (
    FLOW_REACH,
    PRICE_CHANGE_WINDOW,
    PRICE_KIND,
    PRICE_REACH,
    PROTOCOL_KINDS,
    SERIES_METRICS,
    TVL_REACH,
    Point,
    Points,
    ProtocolState,
    Reading,
    TokenState,
    check_query,
    fold_entries,
    keep_from,
    matches,
    order,
    page_of,
)
from ..application.log import LogBatch, LogEntry, pending
from ..application.views import (
    CHANGE_WINDOWS,
    FLOW_CHANGE_WINDOWS,
    RECENT_WINDOW_SECONDS,
    Page,
    PriceView,
    ProtocolQuery,
    ProtocolView,
)
from ..domain.chains import chain_key
from ..domain.observations import TOTAL

_LAYOUT: Final = "2"

_APPLY_BATCH: Final = """
-- Apply one log batch to the hot projection, exactly once.
--
-- Why a script: the tracking position and the state it accounts for must change together
-- or not at all, otherwise a crash or a second writer (a duplicate delivery, an overlapping
-- rebuild) could apply entries twice or skip them. The client computed the writes from a
-- snapshot taken at position ARGV[1]; if the position has moved since, that snapshot is
-- stale, so nothing is written and the client starts over from a fresh read.
--
-- KEYS[1]  the tracking position; KEYS[2] the layout version; KEYS[3..] the keys written
-- ARGV[1]  the position the snapshot was read at; ARGV[2] the batch's last position
-- ARGV[3]  the layout version; ARGV[4] JSON list of writes: [command, index into KEYS, args...]
local seen = redis.call('GET', KEYS[1]) or '0'
if seen ~= ARGV[1] then
  return {0, seen}
end

local writes = cjson.decode(ARGV[4])
-- Scripts are not rolled back on error: refuse a bad write before making any.
local allowed = {SET = true, DEL = true, ZADD = true, ZREM = true, ZREMRANGEBYSCORE = true}
for _, write in ipairs(writes) do
  if not allowed[write[1]] or KEYS[write[2]] == nil then
    return redis.error_reply('hot projection: unexpected write ' .. cjson.encode(write))
  end
end
for _, write in ipairs(writes) do
  redis.call(write[1], KEYS[write[2]], unpack(write, 3))
end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[2])
return {1, ARGV[2]}
"""

_REFERENCE_POINTS: Final = """
-- For each lookup i: the stored point nearest below a cutoff (not below a floor) and the one
-- nearest above it, as the members "observed_at|value" (see _load_references).
--
-- KEYS     the series
-- ARGV[1]  the lookups, space-separated, four words each: index into KEYS, cutoff, floor,
--          max(cutoff, floor) (scores as the client wrote them: exact, never re-formatted)
-- Returns ONE string: two space-separated fields per lookup, in order, each a member or
-- empty. One argument and one reply element instead of thousands: every element costs the
-- client far more than Redis spends here (members hold no spaces: two numbers and a '|').
local words = {}
for word in string.gmatch(ARGV[1], '%S+') do
  words[#words + 1] = word
end
local found = {}
for n = 1, #words, 4 do
  local key = KEYS[tonumber(words[n])]
  local below = redis.call('ZRANGE', key, words[n + 1], words[n + 2],
                           'BYSCORE', 'REV', 'LIMIT', 0, 1)
  local above = redis.call('ZRANGE', key, words[n + 3], '+inf', 'BYSCORE', 'LIMIT', 0, 1)
  found[#found + 1] = below[1] or ''
  found[#found + 1] = above[1] or ''
end
return table.concat(found, ' ')
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
        self._reference_points = client.register_script(_REFERENCE_POINTS)

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
        slugs = list({e.key: None for e in batch.entries if e.kind in PROTOCOL_KINDS})
        tokens = list({e.key: None for e in batch.entries if e.kind == PRICE_KIND})
        replies = await self._client.mget(
            [
                self._position_key,
                self._layout_key,
                *map(self._protocol_key, slugs),
                *map(self._token_key, tokens),
            ]
        )
        position = _int(replies[0])
        self._check_layout(position, replies[1])
        todo = pending(batch, position)
        if todo is None:
            return False

        protocols: dict[str, ProtocolState] = {}
        stored_changes: dict[str, dict[str, float | None]] = {}
        for slug, raw in zip(slugs, replies[2 : 2 + len(slugs)], strict=True):
            if raw is not None:
                protocols[slug], stored_changes[slug] = _protocol_from_json(slug, raw)
        token_states: dict[str, TokenState] = {}
        for token, raw in zip(tokens, replies[2 + len(slugs) :], strict=True):
            if raw is not None:
                token_states[token] = _token_from_json(token, raw)

        tvl_points, price_points, flow_points = _history_points(todo.entries)
        await self._load_references(protocols, token_states, tvl_points, price_points, flow_points)

        changed_protocols, changed_tokens = fold_entries(todo.entries, protocols, token_states)
        writes = _Writes(self._position_key, self._layout_key)
        for slug, state in changed_protocols.items():
            # Only a batch that extends a series can move its changes; the others' stored
            # ones stand (the snapshot holds no history to recompute them from).
            changes = dict(stored_changes.get(slug, {}))
            if slug in tvl_points:
                changes.update(state.tvl_changes())
                self._write_history(writes, self._tvl_key(slug), tvl_points[slug], state)
            for metric in SERIES_METRICS:
                points = flow_points.get((slug, metric))
                if points is not None:
                    changes.update(state.flow_changes(metric))
                    self._write_history(writes, self._flow_key(metric, slug), points, state, metric)
            self._write_protocol(writes, protocols.get(slug), state, changes)
        for token, token_state in changed_tokens.items():
            self._write_token(writes, token_states.get(token), token_state)
            self._write_history(
                writes, self._price_series_key(token), price_points[token], token_state
            )

        status, _ = await self._apply_batch(
            keys=writes.keys,
            args=[str(position), str(todo.last), _LAYOUT, json.dumps(writes.commands())],
        )
        return True if int(status) == 1 else None

    def _check_layout(self, position: int, layout: object) -> None:
        if position and (layout is None or _text(layout) != _LAYOUT):
            raise RuntimeError(
                f"hot projection {self._prefix!r}: its keys were written by another version of "
                f"this adapter (layout {layout!r}, expected {_LAYOUT!r}); reset() it or use a "
                "new prefix, and it rebuilds from the log"
            )

    async def _load_references(
        self,
        protocols: dict[str, ProtocolState],
        tokens: dict[str, TokenState],
        tvl_points: Mapping[str, list[Point]],
        price_points: Mapping[str, list[Point]],
        flow_points: Mapping[tuple[str, str], list[Point]],
    ) -> None:
        """Load into the snapshot the stored history points the changes can refer to.

        A change compares with the point nearest to ``newest - window`` (``percent_change``)
        among those the trim keeps. That point is one of the two neighbours of the cutoff
        in the history after the batch: either a point of the batch, which the fold adds,
        or a stored neighbour, which this loads. So two points per window are enough, not
        the whole history (and they would also be enough for "the last point before").
        Only series already stored can hold any: new protocols and tokens are skipped.
        """
        keys: list[str] = []
        lookups: list[str] = []  # per lookup: key number, cutoff, floor, max(cutoff, floor)
        series: list[str] = []  # per lookup: its series key
        for slug, points in tvl_points.items():
            state = protocols.get(slug)
            if state is None:
                continue
            tvl = state.tvl
            newest = _newest(points, None if tvl is None else tvl.observed_at)
            floor = newest - RECENT_WINDOW_SECONDS
            keys.append(self._tvl_key(slug))
            for window in CHANGE_WINDOWS.values():
                cutoff = newest - window
                lookups += [str(len(keys)), repr(cutoff), repr(floor), repr(max(cutoff, floor))]
                series.append(keys[-1])
        for (slug, metric), points in flow_points.items():
            state = protocols.get(slug)
            if state is None:
                continue
            reading = state.current.get((metric, TOTAL))
            newest = _newest(points, None if reading is None else reading.observed_at)
            floor = newest - RECENT_WINDOW_SECONDS
            keys.append(self._flow_key(metric, slug))
            for window in FLOW_CHANGE_WINDOWS.values():
                cutoff = newest - window
                lookups += [str(len(keys)), repr(cutoff), repr(floor), repr(max(cutoff, floor))]
                series.append(keys[-1])
        for token, points in price_points.items():
            token_state = tokens.get(token)
            if token_state is None:
                continue
            newest = _newest(points, token_state.observed_at)
            cutoff, floor = newest - PRICE_CHANGE_WINDOW, newest - RECENT_WINDOW_SECONDS
            keys.append(self._price_series_key(token))
            lookups += [str(len(keys)), repr(cutoff), repr(floor), repr(max(cutoff, floor))]
            series.append(keys[-1])
        if not keys:
            return
        reply = await self._reference_points(keys=keys, args=[" ".join(lookups)])
        fields = _text(reply).split(" ")
        # Windows of one series often find the same neighbours: parse each member once.
        found: dict[str, set[str]] = {}
        for key, below, above in zip(series, fields[::2], fields[1::2], strict=True):
            found.setdefault(key, set()).update((below, above))
        history = {key: sorted(map(_point, members - {""})) for key, members in found.items()}
        for slug in tvl_points:
            stored = history.get(self._tvl_key(slug))
            if stored:
                protocols[slug] = replace(protocols[slug], recent=Points.of(stored))
        for slug, metric in flow_points:
            stored = history.get(self._flow_key(metric, slug))
            if stored:
                state = protocols[slug]
                flows = {**state.series, metric: Points.of(stored)}
                protocols[slug] = replace(state, series=flows)
        for token in price_points:
            stored = history.get(self._price_series_key(token))
            if stored:
                tokens[token] = replace(tokens[token], recent=Points.of(stored))

    def _write_protocol(
        self,
        writes: _Writes,
        before: ProtocolState | None,
        state: ProtocolState,
        changes: Mapping[str, float | None],
    ) -> None:
        writes.add("SET", self._protocol_key(state.slug), _protocol_json(state, changes))
        new_ranks = self._rank_values(state)
        old_ranks = {} if before is None else self._rank_values(before)
        # Most observations move neither a ranked value nor the scopes (volumes, late
        # points): the rankings already hold the right scores.
        if old_ranks == new_ranks:
            return
        for scope in old_ranks.keys() - new_ranks.keys():
            for direction in ("desc", "asc"):
                writes.add_grouped("ZREM", self._rank_key(direction, scope), state.slug)
        for scope in sorted(new_ranks):
            value = new_ranks[scope]
            if scope in old_ranks and old_ranks[scope] == value:
                continue
            scores = {
                "desc": "inf" if value is None else repr(-value),
                "asc": "inf" if value is None else repr(value),
            }
            for direction, score in scores.items():
                writes.add_grouped("ZADD", self._rank_key(direction, scope), score, state.slug)

    def _write_token(self, writes: _Writes, before: TokenState | None, state: TokenState) -> None:
        writes.add("SET", self._token_key(state.token), _token_json(state, state.change_24h()))
        if before is None or before.observed_at != state.observed_at:
            writes.add_grouped(
                "ZADD", self._recent_tokens_key, repr(-state.observed_at), state.token
            )

    def _write_history(
        self,
        writes: _Writes,
        key: str,
        points: Sequence[Point],
        state: ProtocolState | TokenState,
        metric: str = "tvl",
    ) -> None:
        """Record the batch's observations in order, then trim the series to what a change
        can still select (``keep_from``, ADR 0044), behind the newest observation of the
        token's prices or of the protocol's total ``metric``.

        The folded state's series holds the stored point nearest below each window's
        cutoff (``_load_references``) and the batch's points, so the last of them at or
        before the reach's horizon is the stored series' too.
        """
        for observed_at, value in points:
            at = repr(observed_at)
            # One point per timestamp: the later-recorded observation replaces the earlier.
            writes.add("ZREMRANGEBYSCORE", key, at, at)
            writes.add("ZADD", key, at, _member((observed_at, value)))
        if isinstance(state, TokenState):
            newest, series, reach = state.observed_at, state.recent, PRICE_REACH
        else:
            reading = state.current.get((metric, TOTAL))
            if reading is None:  # pragma: no cover - a total observation always sets one
                return
            newest = reading.observed_at
            if metric == "tvl":
                series, reach = state.recent, TVL_REACH
            else:
                series, reach = state.series.get(metric, Points()), FLOW_REACH
        floor = keep_from(series.times, newest, reach, RECENT_WINDOW_SECONDS)
        writes.add("ZREMRANGEBYSCORE", key, "-inf", f"({floor!r}")

    async def restore(
        self,
        position: int,
        protocols: Mapping[str, ProtocolState | None],
        tokens: Mapping[str, TokenState | None],
    ) -> bool:
        """Rewrite the keys' states, histories and rankings in one script that checks the
        position first (the apply script, with the position left where it is)."""
        slugs, token_ids = list(protocols), list(tokens)
        replies = await self._client.mget(
            [self._position_key, *map(self._protocol_key, slugs), *map(self._token_key, token_ids)]
        )
        if _int(replies[0]) != position:
            return False
        writes = _Writes(self._position_key, self._layout_key)
        for slug, raw in zip(slugs, replies[1 : 1 + len(slugs)], strict=True):
            self._restore_protocol(writes, slug, _stored_protocol(slug, raw), protocols[slug])
        for token, raw in zip(token_ids, replies[1 + len(slugs) :], strict=True):
            self._restore_token(writes, token, raw is not None, tokens[token])
        status, _ = await self._apply_batch(
            keys=writes.keys,
            args=[str(position), str(position), _LAYOUT, json.dumps(writes.commands())],
        )
        return int(status) == 1

    def _restore_protocol(
        self,
        writes: _Writes,
        slug: str,
        stored: ProtocolState | None,
        state: ProtocolState | None,
    ) -> None:
        new_ranks = {} if state is None else self._rank_values(state)
        old_ranks = {} if stored is None else self._rank_values(stored)
        # Out of every ranking the stored (maybe drifted) state or the right one puts it in;
        # then into the right ones with the right scores.
        for scope in old_ranks.keys() | new_ranks.keys():
            for direction in ("desc", "asc"):
                writes.add_grouped("ZREM", self._rank_key(direction, scope), slug)
        series_keys = {metric: self._flow_key(metric, slug) for metric in SERIES_METRICS}
        for key in (self._tvl_key(slug), *series_keys.values()):
            writes.add("DEL", key)
        if state is None:
            writes.add("DEL", self._protocol_key(slug))
            return
        writes.add("SET", self._protocol_key(slug), _protocol_json(state, state.changes()))
        histories = [(self._tvl_key(slug), state.recent)]
        histories += [(series_keys[metric], points) for metric, points in state.series.items()]
        for key, points in histories:
            for observed_at, value in points:
                writes.add("ZADD", key, repr(observed_at), _member((observed_at, value)))
        for scope, ranked in new_ranks.items():
            # Grouped like the removals, which run first (``_removals_first``).
            writes.add_grouped("ZADD", self._rank_key("desc", scope), _rank_score(ranked, -1), slug)
            writes.add_grouped("ZADD", self._rank_key("asc", scope), _rank_score(ranked, 1), slug)

    def _restore_token(
        self, writes: _Writes, token: str, stored: bool, state: TokenState | None
    ) -> None:
        writes.add("DEL", self._price_series_key(token))
        if state is None:
            writes.add("DEL", self._token_key(token))
            if stored:
                writes.add_grouped("ZREM", self._recent_tokens_key, token)
            return
        writes.add("SET", self._token_key(token), _token_json(state, state.change_24h()))
        for observed_at, price in state.recent:
            writes.add(
                "ZADD",
                self._price_series_key(token),
                repr(observed_at),
                _member((observed_at, price)),
            )
        writes.add_grouped("ZADD", self._recent_tokens_key, repr(-state.observed_at), token)

    # --- reading -------------------------------------------------------------------------

    async def list_protocols(self, query: ProtocolQuery) -> Page:
        check_query(query)
        if query.sort == "tvl" and (query.chain is None or query.category is None):
            return await self._ranked_page(query)
        slugs = await self._filtered_slugs(query)
        views = [view for view in await self._protocol_views(slugs) if matches(view, query)]
        ordered = order(views, query.sort, query.descending, query.chain)
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
            # The chain's ranking filters by TVL there; the category's only says who is in
            # it. (A ZINTER weighing the category's scores 0 turned a protocol without a
            # total TVL, scored +inf there, into 0 * inf = NaN, which Redis makes 0: it
            # then failed a min_tvl it met on the chain.)
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrange(
                    self._rank_key("desc", _chain_scope(query.chain)), low, high, byscore=True
                )
                pipe.zrange(self._rank_key("desc", _category_scope(query.category)), 0, -1)
                on_chain, in_category = await pipe.execute()
            members = set(in_category)
            return [_text(member) for member in on_chain if member in members]
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
        replies = await self._client.mget([self._protocol_key(slug) for slug in slugs])
        views = []
        for slug, raw in zip(slugs, replies, strict=True):
            if raw is not None:
                state, changes = _protocol_from_json(slug, raw)
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
        replies = await self._client.mget([self._token_key(token) for token in tokens])
        views = []
        for token, raw in zip(tokens, replies, strict=True):
            if raw is not None:
                views.append(_token_from_json(token, raw).view(json.loads(raw)["change_24h"]))
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
    def _layout_key(self) -> str:
        return f"{self._prefix}layout"

    @property
    def _recent_tokens_key(self) -> str:
        return f"{self._prefix}tokens:recent"

    def _protocol_key(self, slug: str) -> str:
        return f"{self._prefix}protocol:{slug}"

    def _tvl_key(self, slug: str) -> str:
        return f"{self._prefix}tvl:{slug}"

    def _flow_key(self, metric: str, slug: str) -> str:
        return f"{self._prefix}flow:{metric}:{slug}"

    def _token_key(self, token: str) -> str:
        return f"{self._prefix}token:{token}"

    def _price_series_key(self, token: str) -> str:
        return f"{self._prefix}price:{token}"

    def _rank_key(self, direction: str, scope: str) -> str:
        return f"{self._prefix}rank:{direction}:{scope}"

    @staticmethod
    def _rank_values(state: ProtocolState) -> dict[str, float | None]:
        """Each ranking the protocol is in, with the TVL it ranks by there: its total in
        ``all`` and its category's, its TVL on the chain in each chain's (``tvl_on``)."""
        total = None if state.tvl is None else state.tvl.value
        ranks: dict[str, float | None] = {_ALL: total, _category_scope(state.category): total}
        on_chains = tvl_by_chain(state.chains, state.chain_tvls(), total)
        for chain in state.index_chains():
            ranks[_chain_scope(chain)] = on_chains.get(chain)
        return ranks

    @staticmethod
    def _query_scope(query: ProtocolQuery) -> str:
        if query.chain is not None:
            return _chain_scope(query.chain)
        if query.category is not None:
            return _category_scope(query.category)
        return _ALL


class _Writes:
    """The writes of one batch, in the shape the apply script takes."""

    def __init__(self, position_key: str, layout_key: str) -> None:
        self.keys: list[str] = [position_key, layout_key]
        self._index: dict[str, int] = {position_key: 1, layout_key: 2}
        self._commands: list[list[str | int]] = []
        self._grouped: dict[tuple[str, int], list[str]] = {}

    def add(self, command: str, key: str, *args: str) -> None:
        """One command, run in the order added."""
        self._commands.append([command, self._key_index(key), *args])

    def add_grouped(self, command: str, key: str, *args: str) -> None:
        """Arguments of a variadic ``ZADD``/``ZREM`` on a key no ``add`` command touches.

        Every protocol moves in up to ten rankings, and every token in ``tokens:recent``;
        one command per key and batch instead of one per member saves most of the script's
        ``redis.call``s. Safe to merge: a batch writes each member of these keys once.
        """
        self._grouped.setdefault((command, self._key_index(key)), []).extend(args)

    def commands(self) -> list[list[str | int]]:
        merged = list(self._commands)
        for (command, index), args in sorted(self._grouped.items(), key=_removals_first):
            # Chunked: Lua's ``unpack`` fails beyond a few thousand values.
            for start in range(0, len(args), _GROUP_ARGS):
                merged.append([command, index, *args[start : start + _GROUP_ARGS]])
        return merged

    def _key_index(self, key: str) -> int:
        index = self._index.get(key)
        if index is None:
            self.keys.append(key)
            index = self._index[key] = len(self.keys)  # Lua counts KEYS from 1
        return index


# Even, so that a chunk of ZADD arguments never splits a (score, member) pair.
_GROUP_ARGS: Final = 2_000


def _removals_first(group: tuple[tuple[str, int], list[str]]) -> tuple[bool, int]:
    (command, index), _ = group
    return command != "ZREM", index


_ALL: Final = "all"


def _chain_scope(chain: str) -> str:
    # Chain filters are case-insensitive too (``chain_key``): one ranking per chain.
    return f"chain:{chain_key(chain)}"


def _category_scope(category: str) -> str:
    # Category filters are case-insensitive, so one ranking serves every spelling.
    return f"category:{category.casefold()}"


def _history_points(
    entries: Iterable[LogEntry],
) -> tuple[dict[str, list[Point]], dict[str, list[Point]], dict[tuple[str, str], list[Point]]]:
    """The total-TVL points per slug, the price points per token and the total flow points
    per (slug, metric), in log order."""
    tvl_points: dict[str, list[Point]] = {}
    price_points: dict[str, list[Point]] = {}
    flow_points: dict[tuple[str, str], list[Point]] = {}
    for entry in entries:
        data = entry.data
        if entry.kind == PRICE_KIND:
            point = (float(data["observed_at"]), float(data["price"]))
            price_points.setdefault(entry.key, []).append(point)
        elif entry.kind == "metric" and str(data.get("chain", TOTAL)) == TOTAL:
            metric = data.get("metric")
            point = (float(data["observed_at"]), float(data["value"]))
            if metric == "tvl":
                tvl_points.setdefault(entry.key, []).append(point)
            elif metric in SERIES_METRICS:
                flow_points.setdefault((entry.key, str(metric)), []).append(point)
    return tvl_points, price_points, flow_points


def _newest(points: Iterable[Point], current: float | None) -> float:
    return max([observed_at for observed_at, _ in points] + ([] if current is None else [current]))


def _member(point: Point) -> str:
    # The member carries the exact values (scores come back as rounded text); the timestamp
    # in it keeps members distinct when two observations share a value.
    return f"{point[0]!r}|{point[1]!r}"


def _rank_score(value: float | None, sign: int) -> str:
    return "inf" if value is None else repr(sign * value)


def _stored_protocol(slug: str, raw: bytes | str | None) -> ProtocolState | None:
    """The stored state, or None when missing or unreadable (then only the rankings the
    right state names are cleaned)."""
    if raw is None:
        return None
    try:
        return _protocol_from_json(slug, raw)[0]
    except (ValueError, KeyError, TypeError):
        return None


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


# One encoder for every state: ``json.dumps`` with ``separators`` builds a new one per call.
# Floats go out as ``repr`` and come back bit for bit.
_JSON: Final = json.JSONEncoder(separators=(",", ":"))


def _protocol_json(state: ProtocolState, changes: Mapping[str, float | None]) -> str:
    return _JSON.encode(
        {
            "name": state.name,
            "category": state.category,
            "chains": state.chains,
            "url": state.url,
            "oracles": state.oracles,
            "current": [
                [metric, chain, r.value, r.observed_at]
                for (metric, chain), r in state.current.items()
            ],
            "changes": changes,
            "position": state.position,
        }
    )


def _protocol_from_json(
    slug: str, raw: bytes | str
) -> tuple[ProtocolState, dict[str, float | None]]:
    fields = json.loads(raw)
    current = {
        (str(metric), str(chain)): Reading(float(value), float(observed_at))
        for metric, chain, value, observed_at in fields["current"]
    }
    state = ProtocolState(
        slug=slug,
        name=fields["name"],
        category=fields["category"],
        chains=tuple(fields["chains"]),
        url=fields["url"],
        current=current,
        position=int(fields["position"]),
        # States stored before oracles were kept have none.
        oracles=tuple(fields.get("oracles", ())),
    )
    return state, fields["changes"]


def _token_json(state: TokenState, change_24h: float | None) -> str:
    return _JSON.encode(
        {
            "price": state.price,
            "observed_at": state.observed_at,
            "confidence": state.confidence,
            "change_24h": change_24h,
            "position": state.position,
        }
    )


def _token_from_json(token: str, raw: bytes | str) -> TokenState:
    fields = json.loads(raw)
    confidence = fields["confidence"]
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


def _int(value: bytes | str | None) -> int:
    return 0 if value is None else int(value)


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)
