"""Validating ingest items: the one place that turns untrusted dicts into commands.

Used by the REST ingest endpoint, the CLI's file import and the DeFiLlama poller, so every
entry point rejects the same things with the same reasons.

Two paths, one rule. ``parse_observation`` first tries ``_plain_observation``: for the usual
item (every field present with its expected type and acceptable) it asks the domain's
``is_*`` predicates, which test exactly what the ``check_*`` functions check, without
building a reason. Anything else, or anything it cannot vouch for, goes through the checks
one by one, which find the first fault and say why. So a rejection and its reason are the
same as without the fast path (tests/unit/test_application.py holds the two paths to the
same results); the fast path is ~3x cheaper per item (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from ..domain.chains import canonical_chain
from ..domain.errors import DomainError
from ..domain.observations import (
    MAX_ORACLES,
    METRICS,
    TOTAL,
    check_chain,
    check_chains,
    check_label,
    check_metric,
    check_oracles,
    check_text,
    check_timestamp,
    check_value,
    is_chain_list,
    is_label,
    is_text,
    is_timestamp,
    is_value,
)
from ..domain.protocol import check_slug, is_slug
from ..domain.token import check_token_id

OBSERVATION_FIELDS: Final = frozenset(
    {
        "protocol",
        "metric",
        "chain",
        "value",
        "observed_at",
        "source",
        "name",
        "category",
        "chains",
        "url",
        "oracles",
    }
)
PRICE_FIELDS: Final = frozenset({"token", "price", "observed_at", "confidence", "source"})
LISTING_FIELDS: Final = frozenset(
    {"protocol", "name", "category", "chains", "url", "observed_at", "oracles"}
)
MAX_ITEMS_PER_BATCH: Final = 50_000


MAX_TEXT_LENGTH: Final = 2_000


class InvalidItem(ValueError):
    """One ingest item cannot be accepted; the message says why, ``field`` names the field
    it is about (None when it is about the item as a whole)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    @classmethod
    def of(cls, error: DomainError) -> InvalidItem:
        return cls(str(error), field=error.field)


class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r} in an object")
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for ``json``: refuse an object that names a key twice.

    JSON leaves duplicate names undefined and Python keeps the last one silently, so
    ``{"value": -1, "value": 5}`` would be recorded as 5 by one reader and refused by
    another. Raises ``DuplicateKeyError`` (a ``ValueError``, as for any malformed JSON).
    """
    obj = dict(pairs)
    if len(obj) != len(pairs):  # rare: only then look for which key it was
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(key)
            seen.add(key)
    return obj


# The commands are plain (not frozen) slotted dataclasses: a frozen dataclass's __init__ sets
# each field through object.__setattr__, 4x the cost, and ingest builds two per item (~20 %
# of validating one). Nothing mutates them; treat them as values.


class _Command:
    """Pickled as its constructor's arguments: ``defi-realtime ingest`` hands ~60,000 of
    them from its reading process to the writer, and the default way for a slotted
    dataclass took 2.3x as long to load (0.75 s for the snapshot file, in the writer's
    process)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[type[_Command], tuple[object, ...]]:
        fields: tuple[str, ...] = type(self).__slots__  # the dataclass's fields, in order
        return type(self), tuple(getattr(self, name) for name in fields)


@dataclass(slots=True)
class Listing(_Command):
    """Protocol details that come with an observation (or alone, for untracked TVL), and
    when they were observed (the observation's time; a listing item's own, if it has one)."""

    protocol: str
    name: str | None = None
    category: str | None = None
    chains: tuple[str, ...] | None = None
    url: str | None = None
    observed_at: float | None = None
    oracles: tuple[str, ...] | None = None


@dataclass(slots=True)
class RecordMetric(_Command):
    """Command: record one protocol metric observation."""

    protocol: str
    metric: str
    chain: str
    value: float
    observed_at: float
    source: str
    listing: Listing | None = None
    index: int = 0


@dataclass(slots=True)
class RecordPrice(_Command):
    """Command: record one token price observation."""

    token: str
    price: float
    observed_at: float
    confidence: float | None
    source: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why one item of a batch was refused: its list (``kind``), ``index`` in that list, the
    ``field`` at fault (None: the item as a whole) and a ``reason`` for people."""

    kind: str  # "observation" | "price" | "listing"
    index: int
    reason: str
    field: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "index": self.index, "field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """Command: record a batch atomically (or only its valid items, if ``partial``)."""

    metrics: tuple[RecordMetric, ...] = ()
    prices: tuple[RecordPrice, ...] = ()
    listings: tuple[Listing, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    partial: bool = False

    @property
    def size(self) -> int:
        return len(self.metrics) + len(self.prices) + len(self.listings)


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    committed: bool = True
    # The log position at which everything the batch recorded, or found already recorded,
    # can be read: its group's highest new position, else the log head (0 when refused).
    position: int = 0
    # The log positions of the events this batch recorded (not its group's others), as
    # inclusive ranges: who sent an observation, exactly (ADR 0041).
    recorded: list[tuple[int, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "errors": [rejection.to_json() for rejection in self.rejected],
            "committed": self.committed,
            "position": self.position,
        }

    def audit_detail(self) -> dict[str, Any]:
        """What the audit record of the request that sent the batch keeps of it: the counts,
        the main log position its observations can be read at, and the positions of the
        events it recorded, as ``[first, last]`` ranges (ADR 0041)."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "position": self.position,
            "recorded": [list(span) for span in self.recorded],
        }


def ranges(positions: Iterable[int]) -> list[tuple[int, int]]:
    """Ascending ``positions`` as inclusive ``(first, last)`` runs of consecutive ones."""
    runs: list[tuple[int, int]] = []
    first = last = -2
    for position in positions:
        if position != last + 1:
            if last >= 0:
                runs.append((first, last))
            first = position
        last = position
    if last >= 0:
        runs.append((first, last))
    return runs


def parse_timestamp(raw: Any) -> float:
    """Unix seconds (int/float) or an ISO-8601 string (naive means UTC)."""
    if isinstance(raw, str):
        text = raw.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidItem(
                f"observed_at {raw!r} is neither unix seconds nor ISO-8601", field="observed_at"
            ) from None
        if moment.tzinfo is None:
            return check_timestamp(moment.replace(tzinfo=UTC).timestamp())
        return check_timestamp(moment.timestamp())
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidItem(
            "observed_at must be unix seconds or an ISO-8601 string", field="observed_at"
        )
    return check_timestamp(raw)


def _require_mapping(raw: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise InvalidItem("item must be an object")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidItem(f"unknown field(s): {', '.join(map(repr, unknown))}", field=unknown[0])
    return raw


def _optional_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidItem(f"{key} must be a string", field=key)
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidItem(f"{key} is too long", field=key)
    return check_text(value, field=key)


def _listing(raw: Mapping[str, Any], slug: str, observed_at: float | None) -> Listing | None:
    chains = raw.get("chains")
    if chains is not None and not isinstance(chains, list):
        raise InvalidItem("chains must be a list of strings", field="chains")
    name = _optional_str(raw, "name")
    if name is not None:
        check_label(name, what="name")
    category = _optional_str(raw, "category")
    url = _optional_str(raw, "url")
    oracles = raw.get("oracles")
    if oracles is not None and not isinstance(oracles, list):
        raise InvalidItem("oracles must be a list of strings", field="oracles")
    if name is None and category is None and chains is None and url is None and oracles is None:
        return None
    return Listing(
        protocol=slug,
        name=name,
        category=category,
        chains=None if chains is None else tuple(check_chains(chains)),
        url=url,
        observed_at=observed_at,
        oracles=None if oracles is None else tuple(check_oracles(oracles)),
    )


def _plain_text(value: object) -> bool:
    """An optional free-text field (source, category, url) as ``_optional_str`` accepts it."""
    return value is None or (
        type(value) is str and len(value) <= MAX_TEXT_LENGTH and is_text(value)
    )


def _plain_observation(raw: Any, index: int) -> RecordMetric | None:
    """The command for an observation item every value of which is of the usual type and
    acceptable, or None: then ``parse_observation``'s checks decide (and say why)."""
    if type(raw) is not dict or not raw.keys() <= OBSERVATION_FIELDS:
        return None
    get = raw.get
    slug = get("protocol")
    metric = get("metric", "tvl")
    chain = get("chain", TOTAL)
    value = get("value")
    observed_at = get("observed_at")
    source = get("source")
    if not (
        is_slug(slug)
        and type(metric) is str
        and metric in METRICS
        and is_label(chain, identifier=True)
        and is_value(value)
        and is_timestamp(observed_at)
        and _plain_text(source)
    ):
        return None
    stamp = float(observed_at)
    listing = None
    if raw.keys() & _DETAILS:
        listing = _plain_details(raw, slug, stamp)
        if listing is None:
            return None
    return RecordMetric(
        slug, metric, canonical_chain(chain), float(value), stamp, source or "", listing, index
    )


_DETAILS: Final = frozenset({"name", "category", "chains", "url", "oracles"})


def _plain_oracles(oracles: object) -> bool:
    """Whether ``check_oracles`` accepts ``oracles`` as given (see ``_plain_observation``)."""
    return (
        type(oracles) is list
        and len(oracles) <= MAX_ORACLES
        and all(is_label(oracle, identifier=True) for oracle in oracles)
    )


def _plain_details(raw: dict[str, Any], slug: str, observed_at: float | None) -> Listing | None:
    """The listing of an item whose details are all of the usual type and acceptable (at
    least one of them not None), or None (see ``_plain_observation``)."""
    name, category, chains, url, oracles = (
        raw.get("name"),
        raw.get("category"),
        raw.get("chains"),
        raw.get("url"),
        raw.get("oracles"),
    )
    if (
        name is None and category is None and chains is None and url is None and oracles is None
    ) or not (
        (name is None or (type(name) is str and is_label(name)))
        and _plain_text(category)
        and _plain_text(url)
        and (chains is None or (type(chains) is list and is_chain_list(chains)))
        and (oracles is None or _plain_oracles(oracles))
    ):
        return None
    return Listing(
        slug,
        name,
        category,
        None if chains is None else tuple(dict.fromkeys(map(canonical_chain, chains))),
        url,
        observed_at,
        None if oracles is None else tuple(dict.fromkeys(oracles)),
    )


def _plain_listing(raw: Any) -> Listing | None:
    """The command for a listing item (see ``_plain_observation``)."""
    if type(raw) is not dict or not raw.keys() <= LISTING_FIELDS:
        return None
    slug, observed_at = raw.get("protocol"), raw.get("observed_at")
    if not is_slug(slug) or type(raw.get("name")) is not str:
        return None
    if observed_at is None:
        return _plain_details(raw, slug, None)
    if not is_timestamp(observed_at):
        return None
    return _plain_details(raw, slug, float(observed_at))


def parse_observation(raw: Any, index: int = 0) -> RecordMetric:
    """Validate one observation item (raises ``InvalidItem`` with a clear reason)."""
    plain = _plain_observation(raw, index)
    return plain if plain is not None else _checked_observation(raw, index)


def _checked_observation(raw: Any, index: int) -> RecordMetric:
    item = _require_mapping(raw, OBSERVATION_FIELDS)
    try:
        if "protocol" not in item:
            raise InvalidItem("protocol is required", field="protocol")
        slug = check_slug(item["protocol"])
        if "value" not in item:
            raise InvalidItem("value is required", field="value")
        if "observed_at" not in item:
            raise InvalidItem("observed_at is required", field="observed_at")
        chain = item.get("chain", TOTAL)
        metric = check_metric(item.get("metric", "tvl"))
        chain = check_chain(chain) if isinstance(chain, str) else _bad("chain")
        value = check_value(item["value"])
        observed_at = parse_timestamp(item["observed_at"])
        return RecordMetric(
            protocol=slug,
            metric=metric,
            chain=chain,
            value=value,
            observed_at=observed_at,
            source=_optional_str(item, "source") or "",
            listing=_listing(item, slug, observed_at),
            index=index,
        )
    except DomainError as error:
        raise InvalidItem.of(error) from None


def parse_listing(raw: Any) -> Listing:
    """Validate one listing item (a protocol's details without an observation)."""
    plain = _plain_listing(raw)
    return plain if plain is not None else _checked_listing(raw)


def _checked_listing(raw: Any) -> Listing:
    item = _require_mapping(raw, LISTING_FIELDS)
    try:
        slug = check_slug(item.get("protocol"))  # type: ignore[arg-type]
        raw_time = item.get("observed_at")
        listing = _listing(item, slug, None if raw_time is None else parse_timestamp(raw_time))
    except DomainError as error:
        raise InvalidItem.of(error) from None
    if listing is None or listing.name is None:
        raise InvalidItem("a listing needs at least a name", field="name")
    return listing


def parse_price(raw: Any, index: int = 0) -> RecordPrice:
    """Validate one price item (raises ``InvalidItem`` with a clear reason)."""
    item = _require_mapping(raw, PRICE_FIELDS)
    try:
        if "token" not in item:
            raise InvalidItem("token is required", field="token")
        if "price" not in item:
            raise InvalidItem("price is required", field="price")
        if "observed_at" not in item:
            raise InvalidItem("observed_at is required", field="observed_at")
        confidence = item.get("confidence")
        if confidence is not None:
            confidence = check_value(confidence, what="confidence")
            if confidence > 1:
                raise InvalidItem("confidence must be between 0 and 1", field="confidence")
        return RecordPrice(
            token=check_token_id(item["token"]),
            price=check_value(item["price"], what="price"),
            observed_at=parse_timestamp(item["observed_at"]),
            confidence=confidence,
            source=_optional_str(item, "source") or "",
            index=index,
        )
    except DomainError as error:
        raise InvalidItem.of(error) from None


def _bad(what: str) -> str:
    raise InvalidItem(f"{what} must be a string", field=what)


def build_batch(
    observations: Sequence[Any] = (),
    prices: Sequence[Any] = (),
    listings: Sequence[Any] = (),
    *,
    partial: bool = False,
) -> IngestBatch:
    """Parse raw items into an ``IngestBatch``, collecting a rejection per bad item."""
    if len(observations) + len(prices) + len(listings) > MAX_ITEMS_PER_BATCH:
        raise InvalidItem(f"a batch holds at most {MAX_ITEMS_PER_BATCH} items")
    metrics: list[RecordMetric] = []
    records: list[RecordPrice] = []
    listed: list[Listing] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(observations):
        try:
            metrics.append(parse_observation(raw, index))
        except InvalidItem as error:
            rejected.append(Rejection("observation", index, str(error), error.field))
    for index, raw in enumerate(prices):
        try:
            records.append(parse_price(raw, index))
        except InvalidItem as error:
            rejected.append(Rejection("price", index, str(error), error.field))
    for index, raw in enumerate(listings):
        try:
            listed.append(parse_listing(raw))
        except InvalidItem as error:
            rejected.append(Rejection("listing", index, str(error), error.field))
    return IngestBatch(
        metrics=tuple(metrics),
        prices=tuple(records),
        listings=tuple(listed),
        rejected=tuple(rejected),
        partial=partial,
    )
