"""Value rules shared by metric and price observations, listings and alert rules.

Every string that enters the domain from outside (names, chains, sources, URLs, rule names)
goes through ``check_text``, the one place that says which characters are refused.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from typing import Final, Literal, TypeGuard, get_args

from .chains import canonical_chain
from .errors import InvalidObservation

# DeFiLlama's TVL sections (its chainTvls keys "staking", "Ethereum-borrowed"...): kept as
# metrics of their own, never added to ``tvl``, which DeFiLlama's default view leaves them out
# of. Spelled as DeFiLlama spells them.
TvlSection = Literal[
    "borrowed",
    "staking",
    "pool2",
    "vesting",
    "treasury",
    "offers",
    "doublecounted",
    "liquidstaking",
    "dcAndLsOverlap",
    "govtokens",
]
TVL_SECTIONS: Final[tuple[TvlSection, ...]] = get_args(TvlSection)
Metric = Literal["tvl", "volume_24h", "fees_24h", TvlSection]
# The 24 h flows (the ``volumes`` channel; a change series of their own in live frames).
VOLUME_METRICS: Final[frozenset[str]] = frozenset(("volume_24h", "fees_24h"))
METRICS: Final[frozenset[str]] = frozenset(("tvl", *VOLUME_METRICS, *TVL_SECTIONS))
TOTAL: Final = "total"
_SECTIONS_BY_LOWER: Final = {section.lower(): section for section in TVL_SECTIONS}
MAX_NAME_LENGTH: Final = 200
# The real data's longest chain list has 54 entries; ten times that leaves room to grow while
# keeping one observation from carrying (and every read from returning) 200,000 chains.
MAX_CHAINS: Final = 500
# DeFiLlama's longest ``oracles`` list in the real data has 7 names; 50 bounds one listing.
MAX_ORACLES: Final = 50

# Refused in every string: C0 controls, DEL and C1 controls (a NUL cannot be stored in a
# PostgreSQL text column at all, so one would stop the history read model on every batch; the
# others corrupt logs and terminals), and UTF-16 surrogates (a lone one cannot be encoded as
# UTF-8, so the event store could not write it).
_CONTROL: Final = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
# Refused as well in identifiers (slugs, token ids, chain names): characters that do not
# show, or reorder what is shown, so that two different ids look identical (bidi controls,
# zero-width characters, the BOM, the soft hyphen, word joiner and invisible operators).
_INVISIBLE: Final = r"\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff"
_FORBIDDEN_IN_TEXT: Final = re.compile(f"[{_CONTROL}]")
_FORBIDDEN_IN_IDENTIFIER: Final = re.compile(f"[{_CONTROL}{_INVISIBLE}]")


def chain_tvls_key(key: str) -> tuple[Metric, str]:
    """``(metric, chain)`` of a DeFiLlama ``chainTvls`` key: ``"Ethereum"`` is
    ``("tvl", "Ethereum")``; a TVL section is a metric of its own, ``"staking"`` is
    ``("staking", "total")`` and ``"Ethereum-borrowed"`` is ``("borrowed", "Ethereum")``
    (the chain as written; ``check_chain`` canonicalises it). Sections are recognised in
    any case, as DeFiLlama's keys vary. ``section_key`` is the inverse."""
    section = _SECTIONS_BY_LOWER.get(key.strip().lower())
    if section is not None:
        return section, TOTAL
    chain, dash, suffix = key.rpartition("-")
    section = _SECTIONS_BY_LOWER.get(suffix.strip().lower()) if dash else None
    if section is None or not chain.strip():
        return "tvl", key
    return section, chain.strip()


def section_key(section: str, chain: str) -> str:
    """The ``chainTvls`` key DeFiLlama writes for ``section`` on ``chain``: ``"staking"``
    for the total, ``"Ethereum-staking"`` for a chain (``chain_tvls_key``'s inverse)."""
    return section if chain == TOTAL else f"{chain}-{section}"


def is_text(text: object, *, identifier: bool = False) -> TypeGuard[str]:
    """Whether ``check_text`` accepts ``text``: the same rule without a reason, for callers
    that check many values and only need a reason when one fails (ingest)."""
    forbidden = _FORBIDDEN_IN_IDENTIFIER if identifier else _FORBIDDEN_IN_TEXT
    return isinstance(text, str) and forbidden.search(text) is None


def is_label(label: object, *, identifier: bool = False) -> TypeGuard[str]:
    """Whether ``check_label`` accepts ``label`` (see ``is_text``)."""
    forbidden = _FORBIDDEN_IN_IDENTIFIER if identifier else _FORBIDDEN_IN_TEXT
    return (
        isinstance(label, str)
        and 0 < len(label) <= MAX_NAME_LENGTH
        and not label.isspace()  # what str.strip() strips: blank labels are refused
        and forbidden.search(label) is None
    )


def is_chain_list(chains: object) -> TypeGuard[Sequence[str]]:
    """Whether ``check_chains`` accepts ``chains`` (see ``is_text``)."""
    if not isinstance(chains, list | tuple) or len(chains) > MAX_CHAINS:
        return False
    for chain in chains:
        if not (
            isinstance(chain, str)
            and 0 < len(chain) <= MAX_NAME_LENGTH
            and not chain.isspace()
            and _FORBIDDEN_IN_IDENTIFIER.search(chain) is None
        ):
            return False
    return True


def check_text(text: str, *, field: str, identifier: bool = False, what: str | None = None) -> str:
    """Return ``text`` unless it holds a character no string may hold (see ``_CONTROL``), or,
    for an ``identifier``, one that does not show (see ``_INVISIBLE``). The error names
    ``field``; its reason ``what`` (default ``field``, e.g. ``chains[3]`` for ``chains``)."""
    what = what or field
    if not isinstance(text, str):
        raise InvalidObservation(f"{what} must be a string", field=field)
    forbidden = _FORBIDDEN_IN_IDENTIFIER if identifier else _FORBIDDEN_IN_TEXT
    found = forbidden.search(text)
    if found is not None:
        kind = "an invisible or control" if identifier else "a control"
        raise InvalidObservation(
            f"{what} contains {kind} character (U+{ord(found.group()):04X} at {found.start()})",
            field=field,
        )
    return text


# The largest finite float: a number above it (an int of 400 digits) is not finite either.
_FLOAT_MAX: Final = sys.float_info.max
OBSERVED_AT_RANGE: Final = (946_684_800, 4_102_444_800)  # 2000-01-01 .. 2100-01-01


def is_value(value: object) -> TypeGuard[float]:
    """Whether ``check_value`` accepts ``value`` (see ``is_text``); NaN compares false."""
    return (type(value) is float or type(value) is int) and 0 <= value <= _FLOAT_MAX


def is_timestamp(observed_at: object) -> TypeGuard[float]:
    """Whether ``check_timestamp`` accepts ``observed_at`` (see ``is_text``)."""
    low, high = OBSERVED_AT_RANGE
    return (type(observed_at) is float or type(observed_at) is int) and low <= observed_at < high


def check_value(value: float, *, what: str = "value") -> float:
    """Return ``value`` as a float if it is finite and non-negative, else raise."""
    if is_value(value):  # the usual case, without building a reason
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidObservation(f"{what} must be a number, got {type(value).__name__}", field=what)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit integers)
        raise InvalidObservation(
            f"{what} must be finite, got a too large integer", field=what
        ) from None
    if not math.isfinite(number):
        raise InvalidObservation(f"{what} must be finite, got {value!r}", field=what)
    if number < 0:
        raise InvalidObservation(f"{what} must be non-negative, got {value!r}", field=what)
    return number


def check_timestamp(observed_at: float) -> float:
    """Return ``observed_at`` (unix seconds) if it is a plausible finite time."""
    if is_timestamp(observed_at):
        return float(observed_at)
    if isinstance(observed_at, bool) or not isinstance(observed_at, int | float):
        raise InvalidObservation("observed_at must be unix seconds", field="observed_at")
    try:
        stamp = float(observed_at)
    except OverflowError:
        raise InvalidObservation("observed_at out of range", field="observed_at") from None
    # 2000-01-01 .. 2100-01-01: anything outside is a unit mistake (ms vs s) or garbage.
    low, high = OBSERVED_AT_RANGE
    if not math.isfinite(stamp) or not low <= stamp < high:
        raise InvalidObservation(f"observed_at out of range: {observed_at!r}", field="observed_at")
    return stamp


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of ``METRICS``."""
    # isinstance first: an unhashable value (list, dict) would make ``in`` raise TypeError.
    if not isinstance(metric, str) or metric not in METRICS:
        raise InvalidObservation(
            f"unknown metric {metric!r}; expected one of {sorted(METRICS)}", field="metric"
        )
    return metric


def check_label(
    label: str, *, what: str, identifier: bool = False, field: str | None = None
) -> str:
    """Return ``label`` if it is a non-empty string of at most ``MAX_NAME_LENGTH`` characters
    that passes ``check_text``. ``what`` names it in the reason, ``field`` (default ``what``)
    in the error; an ``identifier`` (a chain, an owner) may not hold invisible characters."""
    if is_label(label, identifier=identifier):
        return label
    if not isinstance(label, str) or not label.strip() or len(label) > MAX_NAME_LENGTH:
        raise InvalidObservation(
            f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters",
            field=field or what,
        )
    return check_text(label, field=field or what, identifier=identifier, what=what)


def check_chain(chain: str, *, what: str = "chain") -> str:
    """A chain name (``Ethereum``, ``OP Mainnet``) or ``TOTAL``: an identifier label, returned
    in its canonical spelling (``canonical_chain``: ``"bsc "`` and ``Binance`` are ``BSC``)."""
    if not is_label(chain, identifier=True):
        check_label(chain, what=what, identifier=True)
    return canonical_chain(chain)


def _labels(values: Sequence[str], field: str, limit: int, noun: str) -> list[str]:
    """``values`` checked as a list of at most ``limit`` labels (see ``check_label``), for
    the listing field ``field`` (its items called ``noun`` in the message)."""
    if not isinstance(values, list | tuple):
        raise InvalidObservation(f"{field} must be a list of strings", field=field)
    if len(values) > limit:
        raise InvalidObservation(
            f"{field} lists {len(values)} {noun}; at most {limit} are accepted", field=field
        )
    checked = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidObservation(f"{field} must be a list of strings", field=field)
        checked.append(check_label(value, what=f"{field}[{index}]", identifier=True, field=field))
    return checked


def check_oracles(oracles: Sequence[str]) -> list[str]:
    """A protocol's oracle list (DeFiLlama's ``oracles``: ``["Chainlink", "Pyth"]``): at
    most ``MAX_ORACLES`` names (labels without invisible characters), each once, in the order
    first named."""
    return list(dict.fromkeys(_labels(oracles, "oracles", MAX_ORACLES, "names")))


def check_chains(chains: Sequence[str]) -> list[str]:
    """A protocol's chain list: at most ``MAX_CHAINS`` chain names (see ``check_chain``), in
    their canonical spelling, each once (the first place it is named)."""
    if is_chain_list(chains):
        return list(dict.fromkeys(map(canonical_chain, chains)))
    checked = _labels(chains, "chains", MAX_CHAINS, "chains")
    return list(dict.fromkeys(map(canonical_chain, checked)))
