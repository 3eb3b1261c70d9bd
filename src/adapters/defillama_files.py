"""Market-data files -> ingest items (the "file import" market data source).

Reads DeFiLlama-shaped files and our own observation JSONL and yields items shaped exactly
like the items of the REST ingest body, so the CLI's ``ingest FILE`` feeds them to the same
validation as ``POST /v2/ingest``. Reading is streaming for JSON Lines (a gzip-compressed file
is decompressed on the fly, detected by its magic bytes, not its name); the two JSON document
formats are parsed whole, as the API returns them.

Formats (see ``detect_format``):

``defillama-protocols``
    A JSON array as returned by DeFiLlama ``/protocols`` (or an object wrapping it under
    ``"protocols"``, as ``/lite/protocols2`` does). The payload carries no time: every item is
    stamped with the caller's ``observed_at`` (default: the file's modification time). Each
    protocol yields a ``tvl``/``total`` observation and one per real chain of ``chainTvls``.
``defillama-protocol``
    A JSON object as returned by ``/protocol/{slug}``: the ``tvl`` series
    (``[{date, totalLiquidityUSD}]``) becomes ``total`` observations and each real chain's
    ``chainTvls[chain].tvl`` series becomes that chain's observations.
``snapshots-jsonl``
    Rows ``{captured_at, name, category, tvl, chains, oracles, url}`` (the shared
    protocol-snapshots file): one ``total`` TVL observation per row stamped ``captured_at``.
``tvl-history-jsonl``
    Rows ``{protocol, name, date, tvl}`` (the shared tvl-history file): one ``total`` TVL
    observation per row.
``observations-jsonl``
    Our own format: one ingest item per line (observation, price or listing), passed through.

Decisions:

* Chain keys of ``chainTvls`` that are not chains -- ``borrowed``, ``staking``, ``pool2``,
  ``vesting``, ``treasury``, ``offers``, ``doublecounted``, ``liquidstaking``,
  ``dcAndLsOverlap``, ``govtokens`` and ``<Chain>-<one of those>`` -- are skipped: DeFiLlama
  reports them beside, not inside, TVL.
* A protocol whose TVL is ``null`` (DeFiLlama lists ~1,500 such: CEXes, dexs-only listings) is
  not dropped: it yields a ``"listing"`` item ``{protocol, name, category, chains, url,
  oracles, observed_at}`` so the protocol is still listed, without a TVL value. A ``null``
  *per-chain* value in ``/protocols``' ``chainTvls`` means "no figure for that chain" and is
  skipped.
* Anything else that cannot become an item (malformed JSON, a row missing its name or time, a
  value that is not a number) yields an ``"invalid"`` item with the line number and the reason;
  the caller counts it as rejected. Value *ranges* (negative, NaN, out-of-range times) are left
  to the ingest validation, which gives every entry point the same reasons.
* Slugs: a payload's own ``slug`` when present (slugified too if it is outside the slug
  alphabet), else ``domain.protocol.slugify(name)``
  (lower-case, apostrophes dropped, other characters outside ``[a-z0-9.-]`` -> ``-``). The
  tvl-history file's ``protocol`` is slugified the same way (it holds file names such as
  ``Hedge``). A name with no letter or digit gives no slug: the row is invalid. Two names that
  slugify alike are both emitted: resolving the collision is the caller's business.
* JSON Lines: a line whose object names a key twice is invalid (``{"tvl": 1, "tvl": 2}``
  would otherwise silently be 2), like any other malformed line.
* Timestamps: ISO-8601 strings become unix seconds (a naive time is UTC); DeFiLlama ``date``
  integers are already unix seconds. Only ``observations-jsonl`` keeps ``observed_at`` as
  written (the ingest body accepts both forms).
* ``line`` is the 1-based physical line for JSON Lines; for the JSON document formats it is
  the 1-based position of the record in its array (the protocol in ``/protocols``, the point in
  its series for ``/protocol``), and the reason of an invalid item names the path.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final, Literal, TypeAlias, get_args

from ..application.ingest import no_duplicate_keys
from ..domain.observations import TOTAL, chain_tvls_key
from ..domain.protocol import is_slug, slugify

Format: TypeAlias = Literal[
    "defillama-protocols",
    "defillama-protocol",
    "snapshots-jsonl",
    "tvl-history-jsonl",
    "observations-jsonl",
]
FORMATS: Final[tuple[Format, ...]] = get_args(Format)

ItemKind: TypeAlias = Literal["observation", "price", "listing", "invalid"]

StrPath: TypeAlias = str | os.PathLike[str]

DEFAULT_SOURCES: Final[dict[Format, str]] = {
    "defillama-protocols": "defillama:protocols",
    "defillama-protocol": "defillama:protocol",
    "snapshots-jsonl": "defillama:snapshot",
    "tvl-history-jsonl": "defillama:history",
    "observations-jsonl": "file",
}

_GZIP_MAGIC: Final = b"\x1f\x8b"
_SNIFF_LINES: Final = 20
_SNIFF_BYTES: Final = 256 * 1024
_CHUNK: Final = 1024 * 1024
_LISTING_KEYS: Final = frozenset(
    {"protocol", "name", "category", "chains", "url", "oracles", "observed_at"}
)
# raw_decode is the documented entry to the C scanner: json.loads adds encoding sniffing and
# decode() two whitespace regex matches per line (lines are stripped here instead). Refusing
# duplicate keys costs ~20 % of the decoding (~1 us a line, docs/benchmarks.md).
_raw_decode: Final = json.JSONDecoder(object_pairs_hook=no_duplicate_keys).raw_decode


def _decode(text: str) -> Any:
    """The JSON value ``text`` holds, surrounding whitespace allowed (as json.loads)."""
    text = text.strip(" \t\r\n")
    value, end = _raw_decode(text)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


class UnknownFormatError(ValueError):
    """The file is not in any of the supported formats."""


@dataclass(slots=True)
class ReadItem:
    """One item read from a file.

    ``kind`` is ``"observation"``, ``"price"`` or ``"listing"`` with ``item`` the ingest item
    (a fresh dict the caller may keep), or ``"invalid"`` with ``item`` None and ``error`` the
    reason. ``line`` locates it in the file (see the module docstring). Not frozen: one is
    built per line, and a frozen dataclass's __init__ costs 3x; treat it as a value.
    """

    kind: ItemKind
    item: dict[str, Any] | None
    line: int
    error: str | None = None


def _invalid(line: int, reason: str) -> ReadItem:
    return ReadItem("invalid", None, line, reason)


# --------------------------------------------------------------------------- opening / sniffing


def _is_gzip(path: StrPath) -> bool:
    with open(path, "rb") as raw:
        return raw.read(2) == _GZIP_MAGIC


def _open(path: StrPath) -> io.BufferedIOBase:
    """The file's bytes, decompressed on the fly when it starts with the gzip magic."""
    if _is_gzip(path):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _classify_record(record: Any) -> Format | None:
    """The format a single parsed record (a first JSONL line, or a whole document) belongs to."""
    if isinstance(record, list):
        return "defillama-protocols"
    if not isinstance(record, dict):
        return None
    if "captured_at" in record and "name" in record:
        return "snapshots-jsonl"
    if "token" in record:
        return "observations-jsonl"
    if "protocol" in record:
        if "metric" in record or "value" in record:
            return "observations-jsonl"
        if {"date", "tvl"} <= record.keys():
            return "tvl-history-jsonl"
        if "name" in record and record.keys() <= _LISTING_KEYS:
            return "observations-jsonl"
        return None
    if isinstance(record.get("tvl"), list) or isinstance(record.get("chainTvls"), dict):
        return "defillama-protocol"
    if isinstance(record.get("protocols"), list):
        return "defillama-protocols"
    return None


def _sniff_array(head: bytes) -> Format:
    """A file starting with '[': check its first element looks like a /protocols entry."""
    text = head.decode("utf-8-sig", errors="replace")
    start = text.index("[") + 1
    while start < len(text) and text[start] in " \t\r\n":
        start += 1
    if start >= len(text) or text[start] == "]":
        return "defillama-protocols"  # empty array (or first element beyond the sniff window)
    try:
        first, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return "defillama-protocols"  # first element cut off by the sniff window
    if isinstance(first, dict) and "name" in first:
        return "defillama-protocols"
    raise UnknownFormatError("a JSON array whose elements are not DeFiLlama protocols")


def detect_format(path: StrPath) -> Format:
    """Sniff which of ``FORMATS`` the file at ``path`` holds (gzip is handled transparently).

    Raises ``UnknownFormatError`` when it is none of them (or empty).
    """
    with _open(path) as fh:
        first = fh.readline()
        while first and not first.strip():
            first = fh.readline()
        stripped = first.lstrip(b"\xef\xbb\xbf \t\r\n")
        if not stripped:
            raise UnknownFormatError(f"{os.fspath(path)}: empty file")
        if stripped.startswith(b"["):
            return _sniff_array(first + fh.read(_SNIFF_BYTES))
        if not stripped.startswith(b"{"):
            raise UnknownFormatError(f"{os.fspath(path)}: not JSON or JSON Lines")
        try:
            found = _classify_record(json.loads(first))
        except ValueError:
            found = None
        else:
            if found is None:
                raise UnknownFormatError(
                    f"{os.fspath(path)}: first record matches no supported format"
                )
            return found
        # The first line is not a JSON value on its own: a pretty-printed document, or a JSON
        # Lines file whose first line is broken. Look for a JSONL record a little further on.
        lines = [first]
        for _ in range(_SNIFF_LINES):
            line = fh.readline()
            if not line:
                break
            lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            found = _classify_record(record)
            if found is not None and found not in ("defillama-protocol", "defillama-protocols"):
                return found
        document = b"".join(lines) + fh.read()
    try:
        found = _classify_record(json.loads(document))
    except ValueError as error:
        raise UnknownFormatError(f"{os.fspath(path)}: not valid JSON ({error})") from None
    if found is None:
        raise UnknownFormatError(f"{os.fspath(path)}: document matches no supported format")
    return found


# --------------------------------------------------------------------------- value helpers


@lru_cache(maxsize=4096)
def _text_to_unix(text: str) -> float:
    """Unix seconds from a numeric string or an ISO-8601 string (naive = UTC); cached, as
    files repeat the same few capture times."""
    try:
        number = float(text)
    except ValueError:
        moment = datetime.fromisoformat(text.strip())  # raises ValueError when not ISO-8601
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a time")
    return number


def _to_unix(raw: Any) -> float:
    """Unix seconds from a number, a numeric string or an ISO-8601 string (naive = UTC)."""
    if isinstance(raw, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        return _text_to_unix(raw)
    raise ValueError(f"{type(raw).__name__} is not a time")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _NoSlug(ValueError):
    """A record from which no slug can be had; the message says why."""


def _slug_of(record: dict[str, Any]) -> str:
    """The payload's slug, else the slug of its name (raises ``_NoSlug``). A payload slug
    outside the slug alphabet (DeFiLlama keeps characters such as '+' or '(' in some) is
    mapped into it as a name would be, so every reader gives one protocol one slug."""
    slug = record.get("slug")
    if isinstance(slug, str) and slug.strip():
        slug = slug.strip()
        return slug if is_slug(slug) else _slug_of_name(slug)
    name = record.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _NoSlug("no name or slug")
    return _slug_of_name(name)


@lru_cache(maxsize=65_536)
def _slug_of_name(name: str) -> str:
    # Cached: a snapshot file names each protocol once per capture.
    slug = slugify(name)
    if not slug:
        raise _NoSlug(f"name {name!r} has no letter or digit to make a slug of")
    return slug


def _details(record: dict[str, Any], into: dict[str, Any] | None = None) -> dict[str, Any]:
    """name/category/chains/url/oracles of a DeFiLlama record, leaving out what it does not
    carry (added to ``into``, when given: the snapshot reader builds its items in place)."""
    details: dict[str, Any] = {} if into is None else into
    for key in ("name", "category", "url"):
        value = record.get(key)
        if isinstance(value, str):
            details[key] = value
    chains = record.get("chains")
    if isinstance(chains, list):
        details["chains"] = list(chains)
    oracles = record.get("oracles")
    if isinstance(oracles, list):
        details["oracles"] = list(oracles)
    return details


def _listing(slug: str, details: dict[str, Any], observed_at: float) -> dict[str, Any]:
    return {
        "protocol": slug,
        "name": details.get("name"),
        "category": details.get("category"),
        "chains": list(details.get("chains", ())),
        "url": details.get("url"),
        "oracles": details.get("oracles"),
        # When these details were true: older ones never replace newer ones (so a file of
        # snapshots, newest first, or imported twice, leaves the newest in place).
        "observed_at": observed_at,
    }


def _observation(
    slug: str,
    chain: str,
    value: Any,
    observed_at: float,
    source: str,
    details: dict[str, Any],
    metric: str = "tvl",
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "protocol": slug,
        "metric": metric,
        "chain": chain,
        "value": float(value),
        "observed_at": observed_at,
        "source": source,
    }
    if details:
        item.update(details)
        if "chains" in details:
            item["chains"] = list(details["chains"])
        if "oracles" in details:
            item["oracles"] = list(details["oracles"])
    return item


# --------------------------------------------------------------------------- JSON Lines formats


def _snapshot_item(record: dict[str, Any], line: int, source: str) -> ReadItem:
    try:
        slug = _slug_of(record)
    except _NoSlug as error:
        return _invalid(line, f"row has {error}")
    try:
        observed_at = _to_unix(record.get("captured_at"))
    except ValueError as error:
        return _invalid(line, f"captured_at: {error}")
    tvl = record.get("tvl")
    if tvl is None:
        return ReadItem("listing", _listing(slug, _details(record), observed_at), line)
    if not _is_number(tvl):
        return _invalid(line, f"tvl must be a number or null, got {type(tvl).__name__}")
    # The item built in place (what _observation(..., _details(record)) gives, keys in the
    # same order): this runs for every row of a snapshot file.
    item: dict[str, Any] = {
        "protocol": slug,
        "metric": "tvl",
        "chain": TOTAL,
        "value": float(tvl),
        "observed_at": observed_at,
        "source": source,
    }
    return ReadItem("observation", _details(record, item), line)


def _history_item(record: dict[str, Any], line: int, source: str) -> ReadItem:
    protocol = record.get("protocol")
    name = record.get("name")
    try:
        if isinstance(protocol, str) and protocol.strip():
            slug = _slug_of_name(protocol)
        elif isinstance(name, str) and name.strip():
            slug = _slug_of_name(name)
        else:
            return _invalid(line, "row has neither protocol nor name")
    except _NoSlug as error:
        return _invalid(line, f"row has {error}")
    try:
        observed_at = _to_unix(record.get("date"))
    except ValueError as error:
        return _invalid(line, f"date: {error}")
    tvl = record.get("tvl")
    if not _is_number(tvl):
        return _invalid(line, f"tvl must be a number, got {type(tvl).__name__}")
    details = {"name": name} if isinstance(name, str) else {}
    return ReadItem(
        "observation", _observation(slug, "total", tvl, observed_at, source, details), line
    )


def _own_item(record: dict[str, Any], line: int, source: str) -> ReadItem:
    kind: ItemKind
    if "token" in record:
        if "protocol" in record:
            return _invalid(line, "an item has either a protocol or a token, not both")
        kind = "price"
    elif "protocol" in record:
        listing_only = "value" not in record and "metric" not in record
        kind = "listing" if listing_only and record.keys() <= _LISTING_KEYS else "observation"
    else:
        return _invalid(line, "item has neither protocol nor token")
    if kind != "listing" and "source" not in record:
        record["source"] = source
    return ReadItem(kind, record, line)


def _lines(fh: io.BufferedIOBase) -> Iterator[bytes]:
    """The lines of ``fh`` without their ``\n``, read a block at a time: iterating a GzipFile
    costs a Python call (GzipFile.readline) per line. ``read1`` returns what one read of the
    underlying stream gives, so a truncated file still yields the lines before the damage."""
    rest = b""
    while block := fh.read1(_CHUNK):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _read_jsonl(path: StrPath, fmt: Format, source: str | None) -> Iterator[ReadItem]:
    default = source if source is not None else DEFAULT_SOURCES[fmt]
    convert = {"snapshots-jsonl": _snapshot_item, "tvl-history-jsonl": _history_item}.get(
        fmt, _own_item
    )
    line = 0
    with _open(path) as fh:
        try:
            for line, raw in enumerate(_lines(fh), 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                    record = _decode(text.lstrip("\ufeff") if line == 1 else text)
                except ValueError as error:  # includes UnicodeDecodeError
                    yield _invalid(line, f"malformed JSON: {error}")
                    continue
                if isinstance(record, dict):
                    yield convert(record, line, default)
                else:
                    yield _invalid(line, f"expected a JSON object, got {type(record).__name__}")
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            yield _invalid(line + 1, f"corrupt or truncated compressed data: {error}")


# --------------------------------------------------------------------------- JSON documents


def _load_document(path: StrPath) -> Any:
    with _open(path) as fh:
        return json.loads(fh.read())


def _protocols_entries(document: Any) -> list[Any] | None:
    if isinstance(document, list):
        return document
    if isinstance(document, dict) and isinstance(document.get("protocols"), list):
        entries: list[Any] = document["protocols"]
        return entries
    return None


def _read_protocols(document: Any, observed_at: float, source: str) -> Iterator[ReadItem]:
    entries = _protocols_entries(document)
    if entries is None:
        yield _invalid(1, "expected a JSON array of protocols")
        return
    for line, record in enumerate(entries, 1):
        if not isinstance(record, dict):
            yield _invalid(line, f"[{line - 1}]: expected an object")
            continue
        try:
            slug = _slug_of(record)
        except _NoSlug as error:
            yield _invalid(line, f"[{line - 1}]: protocol has {error}")
            continue
        details = _details(record)
        tvl = record.get("tvl")
        if tvl is None:
            yield ReadItem("listing", _listing(slug, details, observed_at), line)
        elif _is_number(tvl):
            item = _observation(slug, "total", tvl, observed_at, source, details)
            yield ReadItem("observation", item, line)
        else:
            yield _invalid(line, f"[{line - 1}] {slug}: tvl must be a number or null")
        chain_tvls = record.get("chainTvls")
        if chain_tvls is None:
            continue
        if not isinstance(chain_tvls, dict):
            yield _invalid(line, f"[{line - 1}] {slug}: chainTvls must be an object")
            continue
        for key, value in chain_tvls.items():
            if value is None:
                continue
            if not _is_number(value):
                yield _invalid(line, f"[{line - 1}] {slug}: chainTvls[{key!r}] is not a number")
                continue
            metric, chain = chain_tvls_key(key)
            item = _observation(slug, chain, value, observed_at, source, details, metric)
            yield ReadItem("observation", item, line)


def _series_items(
    slug: str,
    chain: str,
    series: Any,
    where: str,
    source: str,
    details: dict[str, Any],
    metric: str = "tvl",
) -> Iterator[ReadItem]:
    if not isinstance(series, list):
        yield _invalid(1, f"{where}: expected a list of {{date, totalLiquidityUSD}}")
        return
    for line, point in enumerate(series, 1):
        here = f"{where}[{line - 1}]"
        if not isinstance(point, dict):
            yield _invalid(line, f"{here}: expected an object")
            continue
        try:
            observed_at = _to_unix(point.get("date"))
        except ValueError as error:
            yield _invalid(line, f"{here}.date: {error}")
            continue
        value = point.get("totalLiquidityUSD")
        if not _is_number(value):
            yield _invalid(line, f"{here}.totalLiquidityUSD is not a number")
            continue
        item = _observation(slug, chain, value, observed_at, source, details, metric)
        yield ReadItem("observation", item, line)


def _read_protocol(document: Any, source: str) -> Iterator[ReadItem]:
    if not isinstance(document, dict):
        yield _invalid(1, "expected a JSON object (DeFiLlama /protocol/{slug})")
        return
    try:
        slug = _slug_of(document)
    except _NoSlug as error:
        yield _invalid(1, f"protocol has {error}")
        return
    details = _details(document)
    if "tvl" in document:
        yield from _series_items(slug, "total", document["tvl"], "tvl", source, details)
    chain_tvls = document.get("chainTvls") or {}
    if not isinstance(chain_tvls, dict):
        yield _invalid(1, "chainTvls must be an object")
        return
    for key, section in chain_tvls.items():
        where = f"chainTvls[{key!r}].tvl"
        if not isinstance(section, dict):
            yield _invalid(1, f"chainTvls[{key!r}]: expected an object with a tvl series")
            continue
        metric, chain = chain_tvls_key(key)
        series = section.get("tvl")
        yield from _series_items(slug, chain, series, where, source, details, metric)


# --------------------------------------------------------------------------- public API


def protocols_document_items(
    document: Any, *, observed_at: float, source: str = "defillama:protocols"
) -> Iterator[ReadItem]:
    """Items of a ``/protocols`` response already decoded (used by the HTTP poller)."""
    yield from _read_protocols(document, observed_at, source)


def read_items(
    path: StrPath,
    *,
    source: str | None = None,
    observed_at: float | str | datetime | None = None,
    fmt: Format | None = None,
) -> Iterator[ReadItem]:
    """Yield the ingest items held by the file at ``path``, in file order.

    ``source`` overrides the per-format default (``DEFAULT_SOURCES``); for
    ``observations-jsonl`` it only fills in items that have no ``source``. ``observed_at``
    stamps ``defillama-protocols`` items (default: the file's modification time); the other
    formats carry their own times. ``fmt`` skips detection. JSON Lines are streamed; a JSON
    document that cannot be parsed yields a single ``"invalid"`` item.
    """
    fmt = fmt if fmt is not None else detect_format(path)
    if fmt not in FORMATS:
        raise UnknownFormatError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt.endswith("-jsonl"):
        yield from _read_jsonl(path, fmt, source)
        return
    try:
        document = _load_document(path)
    except ValueError as error:
        yield _invalid(getattr(error, "lineno", 1), f"malformed JSON: {error}")
        return
    default = source if source is not None else DEFAULT_SOURCES[fmt]
    if fmt == "defillama-protocol":
        yield from _read_protocol(document, default)
        return
    if observed_at is None:
        stamp = os.stat(path).st_mtime
    elif isinstance(observed_at, datetime):
        moment = observed_at if observed_at.tzinfo else observed_at.replace(tzinfo=UTC)
        stamp = moment.timestamp()
    else:
        stamp = _to_unix(observed_at)
    yield from _read_protocols(document, stamp, default)


def _count_lines(path: StrPath) -> int:
    count = 0
    last = b"\n"
    with _open(path) as fh:
        while chunk := fh.read(_CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def estimate_items(path: StrPath, *, fmt: Format | None = None) -> int | None:
    """A cheap estimate of how many items ``read_items`` will yield (for a progress bar).

    JSON Lines: the number of lines. JSON documents: counted from the parsed document. None
    when the file cannot be read or recognised.
    """
    try:
        fmt = fmt if fmt is not None else detect_format(path)
        if fmt.endswith("-jsonl"):
            return _count_lines(path)
        document = _load_document(path)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile):
        return None
    if fmt == "defillama-protocols":
        entries = _protocols_entries(document)
        if entries is None:
            return None
        total = 0
        for record in entries:
            total += 1
            chain_tvls = record.get("chainTvls") if isinstance(record, dict) else None
            if isinstance(chain_tvls, dict):
                total += sum(1 for value in chain_tvls.values() if value is not None)
        return total
    if not isinstance(document, dict):
        return None
    total = len(document["tvl"]) if isinstance(document.get("tvl"), list) else 0
    chain_tvls = document.get("chainTvls")
    if isinstance(chain_tvls, dict):
        for section in chain_tvls.values():
            if isinstance(section, dict):
                series = section.get("tvl")
                total += len(series) if isinstance(series, list) else 0
    return total
