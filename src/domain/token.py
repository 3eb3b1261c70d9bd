"""The Token aggregate: price observations for a coin id (``chain:address``/``coingecko:id``)."""

from __future__ import annotations

import re
from typing import Any, Final
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .errors import InvalidObservation
from .observations import check_text, check_timestamp, check_value
from .recent import (
    PRICE,
    StoredObservations,
    WindowedSnapshot,
    bounded,
    known_value,
    remember,
    window_of,
    window_pairs,
)

# DeFiLlama's coin ids: ``coingecko:<id>`` (``coingecko:ethereum``) or ``<chain>:<address>``
# (``ethereum:0xdac1...``, ``solana:EPjF...``). The prefix is 1-40 lower-case ASCII letters,
# digits, '_' or '-'; the rest 1-128 ASCII letters, digits, '_', '.' or '-'. ASCII only, so no
# control, bidi or zero-width character can pass (the ban of ``check_text``). An ECMA-262
# pattern as well, for the OpenAPI document.
TOKEN_ID_PATTERN: Final = r"^[a-z0-9_-]{1,40}:[A-Za-z0-9_.-]{1,128}$"
_TOKEN_ID: Final = re.compile(TOKEN_ID_PATTERN)
# An EVM address: '0x' and 40 hex digits. Its letters' case is only a checksum (EIP-55), so
# ``0xA0b8...`` and ``0xa0b8...`` name one contract. Other addresses keep their case: a
# Solana (base58) address, for one, is a different account in another case.
_EVM_TOKEN_ID: Final = re.compile(r"([a-z0-9_-]{1,40}):(0[xX][0-9a-fA-F]{40})")
TOKEN_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/token/")


def canonical_token_id(token_id: str) -> str:
    """The one spelling of ``token_id``: an EVM address (``0x`` + 40 hex digits) in lower
    case (DeFiLlama's own form), any other id as it is. Not a validation (see
    ``check_token_id``): ids recorded before this rule existed are mapped with it too."""
    matched = _EVM_TOKEN_ID.fullmatch(token_id)
    if matched is None:
        return token_id
    return f"{matched[1]}:{matched[2].lower()}"


def check_token_id(token_id: str) -> str:
    """Return ``token_id`` in its canonical spelling (``canonical_token_id``) if it matches
    ``TOKEN_ID_PATTERN``: every id a request names goes through here, so two spellings of
    one EVM address meet as one token."""
    if not isinstance(token_id, str) or not _TOKEN_ID.fullmatch(token_id):
        raise InvalidObservation(
            f"invalid token id {token_id!r}: expected 'coingecko:<id>' or '<chain>:<address>' "
            "(ASCII letters, digits, '_', '.', '-')",
            field="token",
        )
    return canonical_token_id(token_id)


class Token(Aggregate):
    """A priced token. Same observation rules as protocol metrics, and the same bounded
    memory (``domain.recent``: its prices are one series, ``PRICE``). Class version 2:
    version 1 kept every price in ``history``."""

    class_version = 2

    class Snapshot(WindowedSnapshot):
        """The float-keyed window as JSON pairs."""

        @staticmethod
        def encode_state(state: dict[str, Any]) -> dict[str, Any]:
            state["recent"] = window_pairs(state["recent"])
            return state

        @staticmethod
        def decode_state(state: dict[str, Any]) -> dict[str, Any]:
            state["recent"] = window_of(state["recent"])
            return state

    @staticmethod
    def create_id(token_id: str, *_: Any, **__: Any) -> UUID:
        return Token.id_for(token_id)

    @staticmethod
    def id_for(token_id: str) -> UUID:
        """The aggregate ID of ``token_id``, the same for every spelling of it."""
        return uuid5(TOKEN_NAMESPACE, canonical_token_id(token_id))

    @event("Registered")
    def __init__(self, token_id: str) -> None:
        # Canonical on replay too: events recorded before the rule may hold another spelling.
        self.token_id = canonical_token_id(token_id)
        self.price: float | None = None
        self.observed_at: float | None = None
        self.confidence: float | None = None
        # {observed_at: price} of the newest prices, and the newest time that left it.
        self.recent: dict[float, float] = {}
        self.horizon: float | None = None

    @classmethod
    def register(cls, token_id: str) -> Token:
        return cls(token_id=check_token_id(token_id))

    def record_price(
        self,
        price: float,
        observed_at: float,
        confidence: float | None = None,
        source: str = "",
        stored: StoredObservations | None = None,
    ) -> bool:
        """Record a price; returns False for an identical repeat. ``stored`` answers for
        times beyond the recent window (``domain.recent``)."""
        number = check_value(price, what="price")
        stamp = check_timestamp(observed_at)
        check_text(source or "", field="source")
        if confidence is not None:
            confidence = check_value(confidence, what="confidence")
            if confidence > 1:
                raise InvalidObservation("confidence must be between 0 and 1", field="confidence")
        if known_value(self.recent, self.horizon, stamp, self.id, PRICE, stored) == number:
            return False
        self._price_recorded(self.token_id, number, stamp, confidence, source or "")
        return True

    @event("PriceRecorded")
    def _price_recorded(
        self,
        token_id: str,
        price: float,
        observed_at: float,
        confidence: float | None,
        source: str,
    ) -> None:
        self.horizon = remember(self.recent, self.horizon, observed_at, price)
        if self.observed_at is None or observed_at >= self.observed_at:
            self.price = price
            self.observed_at = observed_at
            self.confidence = confidence

    def beyond_window(self, observed_at: float) -> bool:
        """Whether only the stored events can tell if a price at ``observed_at`` was
        recorded (see ``Protocol.beyond_window``)."""
        return self.horizon is not None and observed_at <= self.horizon

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A version-1 state kept every price in ``history``: keep the window of it."""
        state["recent"], state["horizon"] = bounded(state.pop("history", {}))
