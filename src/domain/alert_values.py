"""What an alert rule is made of, as typed values: its target, condition and channels.

Pydantic models, so that one definition validates what a client sends, types what the
aggregate and every read model hold, and generates the API's JSON schemas. Events keep
these as plain JSON objects (``model_dump``), so stored rules load with or without this
module's validation (``*.stored`` rebuilds a value without checking it: a rule accepted
under older rules must still load).

``parse_*`` turn untrusted input into values or raise ``InvalidRule`` with a message that
names the offending field (``condition.window must be one of '1h', '24h', '7d'``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from .errors import DomainError
from .observations import TOTAL, Metric, check_chain, check_text
from .protocol import SLUG_PATTERN, check_slug
from .token import TOKEN_ID_PATTERN, canonical_token_id, check_token_id

__all__ = [
    "MAX_CHANNELS",
    "MAX_COOLDOWN",
    "WINDOWS",
    "AnomalyCondition",
    "Channel",
    "Channels",
    "Condition",
    "Cooldown",
    "EmailChannel",
    "InvalidRule",
    "MevCondition",
    "MevTarget",
    "PctChangeCondition",
    "ProtocolTarget",
    "RuleTarget",
    "ThresholdCondition",
    "TokenTarget",
    "WebhookChannel",
    "WebsocketChannel",
    "check_pairing",
    "mev_measure",
    "parse_channels",
    "parse_condition",
    "parse_cooldown",
    "parse_target",
    "public_channels",
    "stored_channels",
    "stored_condition",
    "stored_target",
    "validation_message",
]

Direction = Literal["above", "below"]
Window = Literal["1h", "24h", "7d"]
WINDOWS: Final[dict[str, int]] = {"1h": 3_600, "24h": 86_400, "7d": 604_800}
MAX_COOLDOWN: Final = 30 * 86_400
MAX_CHANNELS: Final = 10
MAX_URL: Final = 2_000

_VALUE = ConfigDict(frozen=True, extra="forbid", strict=True)


class InvalidRule(DomainError):
    """An alert rule's target, condition, channels or cooldown is not acceptable; ``field``
    names the part (``target``, ``condition``...) when one is to blame."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _checked(check: Any) -> AfterValidator:
    """A domain check as a pydantic validator (its ``DomainError`` becomes a field error)."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except DomainError as error:
            raise ValueError(str(error)) from None

    return AfterValidator(validate)


def _blank_is_total(value: Any) -> Any:
    return TOTAL if value is None or value == "" else value


Slug = Annotated[
    str,
    # The pattern is documentation (JSON schema); ``check_slug`` validates, with its message.
    Field(description="a listed protocol's slug", json_schema_extra={"pattern": SLUG_PATTERN}),
    _checked(check_slug),
]
TokenId = Annotated[
    str,
    Field(
        description="DeFiLlama's coin id: 'coingecko:<id>' or '<chain>:<address>'",
        examples=["coingecko:ethereum"],
        json_schema_extra={"pattern": TOKEN_ID_PATTERN},
    ),
    _checked(check_token_id),
]
ChainName = Annotated[
    str,
    BeforeValidator(_blank_is_total),
    Field(min_length=1, max_length=200, description="'total' or a chain name"),
    _checked(lambda chain: check_chain(chain, what="chain")),
]
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]
EVM_ADDRESS_PATTERN: Final = r"^0x[0-9a-fA-F]{40}$"
EvmAddress = Annotated[
    str,
    Field(
        pattern=EVM_ADDRESS_PATTERN,
        description="a 0x address (any case; kept lower-case)",
        examples=["0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"],
    ),
    AfterValidator(str.lower),
]


class ProtocolTarget(BaseModel):
    """A protocol's metric, in total or on one chain."""

    model_config = _VALUE
    protocol: Slug
    metric: Metric = "tvl"
    chain: ChainName = TOTAL

    @property
    def key(self) -> str:
        """The series it watches, named like the log entries that feed it."""
        return f"protocol:{self.protocol}:{self.metric}:{self.chain}"


class TokenTarget(BaseModel):
    """A token's price."""

    model_config = _VALUE
    token: TokenId
    metric: Literal["price"] = "price"

    @property
    def key(self) -> str:
        return f"token:{self.token}"


class MevTarget(BaseModel):
    """The MEV detections of one EVM chain (by chain id): the target of an ``mev``
    condition (docs/onchain.md)."""

    model_config = _VALUE
    chain_id: Annotated[int, Field(gt=0, description="the EVM chain id (1: Ethereum)")]
    metric: Literal["mev"] = "mev"

    @property
    def key(self) -> str:
        return f"mev:{self.chain_id}"


_TARGET_FIELDS: Final = {
    "protocol": "protocol target",
    "token": "token target",
    "chain_id": "mev target",
}


def _target_tag(value: Any) -> str | None:
    if isinstance(value, TokenTarget):
        return "token target"
    if isinstance(value, MevTarget):
        return "mev target"
    if not isinstance(value, Mapping):
        return "protocol target"  # not an object: the member's own error says so
    tags = [tag for name, tag in _TARGET_FIELDS.items() if name in value]
    return tags[0] if len(tags) == 1 else None


RuleTarget: TypeAlias = Annotated[
    Annotated[ProtocolTarget, Tag("protocol target")]
    | Annotated[TokenTarget, Tag("token target")]
    | Annotated[MevTarget, Tag("mev target")],
    Discriminator(
        _target_tag,
        custom_error_type="target_kind",
        custom_error_message="target needs exactly one of 'protocol', 'token' or 'chain_id'",
    ),
]


class ThresholdCondition(BaseModel):
    """The value is above (>=) or below (<=) ``value``."""

    model_config = _VALUE
    kind: Literal["threshold"]
    direction: Direction
    value: Annotated[FiniteNumber, Field(ge=0)]


class PctChangeCondition(BaseModel):
    """The change over ``window``, in percent, is above or below ``value`` (-10: a fall of
    10 % or more)."""

    model_config = _VALUE
    kind: Literal["pct_change"]
    direction: Direction
    value: Annotated[FiniteNumber, Field(ge=-100, description="percent")]
    window: Window

    @property
    def seconds(self) -> int:
        return WINDOWS[self.window]


Move = Literal["fall", "rise", "any"]


class AnomalyCondition(BaseModel):
    """The observation is an anomaly of its series scoring at least ``min_score`` (in
    standard deviations, see docs/anomalies.md), moving as ``move`` says (a fall by
    default: TVL draining)."""

    model_config = _VALUE
    kind: Literal["anomaly"]
    min_score: Annotated[FiniteNumber, Field(gt=0, le=1_000, description="standard deviations")]
    move: Move = "fall"

    # The rule reads like a threshold on the anomaly score: it holds while the score of
    # the latest observation is at least ``min_score``.
    @property
    def direction(self) -> Direction:
        return "above"

    @property
    def value(self) -> float:
        return self.min_score


MevKind = Literal["sandwich", "arbitrage"]
# The measure of an ``mev`` rule on a detection that its filters do not match (or on a
# retraction): below any ``min_profit_usd``, so the rule resolves.
NO_MEV_MATCH: Final = -1.0


class MevCondition(BaseModel):
    """An MEV detection (``MevDetected``, docs/onchain.md) of the target chain matching the
    filters: in ``pool`` (among the pools it went through), by ``actor``, of ``detection``
    kind, with a profit of at least ``min_profit_usd`` (a profit not valued in USD counts
    as 0). The measure is the detection's USD profit; see ``mev_measure``."""

    model_config = _VALUE
    kind: Literal["mev"]
    min_profit_usd: Annotated[FiniteNumber, Field(ge=0, description="USD")] = 0.0
    pool: EvmAddress | None = None
    actor: EvmAddress | None = None
    detection: MevKind | None = Field(None, description="sandwich or arbitrage (default: both)")

    # The rule reads like a threshold on the matching detection's USD profit.
    @property
    def direction(self) -> Direction:
        return "above"

    @property
    def value(self) -> float:
        return self.min_profit_usd


Condition: TypeAlias = Annotated[
    ThresholdCondition | PctChangeCondition | AnomalyCondition | MevCondition,
    Field(discriminator="kind"),
]
AnyCondition: TypeAlias = ThresholdCondition | PctChangeCondition | AnomalyCondition | MevCondition
AnyTarget: TypeAlias = ProtocolTarget | TokenTarget | MevTarget


def check_pairing(target: AnyTarget, condition: AnyCondition) -> None:
    """An ``mev`` condition watches an MEV target (a chain's detections) and only it does:
    ``InvalidRule`` otherwise."""
    if isinstance(condition, MevCondition) != isinstance(target, MevTarget):
        if isinstance(target, MevTarget):
            raise InvalidRule("an MEV target ('chain_id') needs condition.kind 'mev'", "condition")
        raise InvalidRule(
            "condition.kind 'mev' needs an MEV target: {\"chain_id\": <EVM chain id>}", "target"
        )


def mev_measure(condition: MevCondition, detection: Mapping[str, Any] | None) -> float:
    """An ``mev`` rule's measure on one detection (a ``MevDetected`` fact as the log carries
    it; None: a retraction): its USD profit (0 when not valued) when it matches the
    filters, else ``NO_MEV_MATCH``."""
    if detection is None:
        return NO_MEV_MATCH
    if condition.detection is not None and detection.get("kind") != condition.detection:
        return NO_MEV_MATCH
    if condition.actor is not None and str(detection.get("actor")) != condition.actor:
        return NO_MEV_MATCH
    pools = [str(pool) for pool in detection.get("pools") or [detection.get("pool")]]
    if condition.pool is not None and condition.pool not in pools:
        return NO_MEV_MATCH
    usd = detection.get("profit_usd")
    return 0.0 if usd is None else float(usd)


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return url


def _email(address: str) -> str:
    local, at, domain = address.partition("@")
    if not at or not local or not domain:
        raise ValueError("must be an email address")
    return address


class WebhookChannel(BaseModel):
    """An HTTP POST of each transition, signed with ``secret`` when one is set."""

    model_config = _VALUE
    kind: Literal["webhook"]
    url: Annotated[
        str,
        # The pattern documents ``_http_url`` (JSON schema); the validator checks.
        Field(max_length=MAX_URL, json_schema_extra={"pattern": "^https?://"}),
        AfterValidator(_http_url),
        _checked(lambda url: check_text(url, field="url")),
    ]
    secret: (
        Annotated[
            str,
            Field(min_length=1, max_length=200),
            _checked(lambda secret: check_text(secret, field="secret")),
        ]
        | None
    ) = None


class EmailChannel(BaseModel):
    model_config = _VALUE
    kind: Literal["email"]
    address: Annotated[
        str,
        Field(max_length=320, json_schema_extra={"pattern": r"^[^@]+@[\s\S]+$"}),
        AfterValidator(_email),
        _checked(lambda address: check_text(address, field="address", identifier=True)),
    ]


class WebsocketChannel(BaseModel):
    """The owner's WebSocket connections (the ``alerts`` channel)."""

    model_config = _VALUE
    kind: Literal["websocket"]


Channel: TypeAlias = Annotated[
    WebhookChannel | EmailChannel | WebsocketChannel, Field(discriminator="kind")
]
Channels: TypeAlias = Annotated[list[Channel], Field(min_length=1, max_length=MAX_CHANNELS)]
Cooldown: TypeAlias = Annotated[
    int, Field(ge=0, le=MAX_COOLDOWN, description="seconds (data time) between two firings")
]

_TARGET: Final = TypeAdapter(RuleTarget)
_CONDITION: Final = TypeAdapter(Condition)
_CHANNELS: Final = TypeAdapter(Channels)
_COOLDOWN: Final = TypeAdapter(Annotated[Cooldown, Field(strict=True)])


# -- messages -------------------------------------------------------------------------------


def _is_tag(part: int | str, given: Any) -> bool:
    """Whether a location part names a union member (a tag) rather than an input field."""
    if not isinstance(part, str):
        return False
    kind = given.get("kind") if isinstance(given, Mapping) else None
    return part.endswith(" target") or part == kind


def _path(prefix: str, loc: Sequence[int | str], given: Any) -> str:
    """``loc`` as a user reads it (``channels[0].kind``), leaving out union tags: walk the
    input alongside, and skip the location parts that are not in it."""
    path = prefix
    for part in loc:
        if isinstance(part, int) and isinstance(given, list) and 0 <= part < len(given):
            path, given = f"{path}[{part}]", given[part]
        elif isinstance(part, str) and isinstance(given, Mapping) and part in given:
            path, given = f"{path}.{part}" if path else part, given[part]
        elif isinstance(part, str) and not isinstance(given, Mapping | list):
            break
        elif _is_tag(part, given):
            continue
        else:
            path = f"{path}.{part}" if path else str(part)
            given = None
    return path


_MESSAGES: Final[dict[str, str]] = {
    "missing": "{path} is required",
    "extra_forbidden": "{path}: unknown field",
    "model_type": "{path} must be an object",
    "model_attributes_type": "{path} must be an object",
    "dict_type": "{path} must be an object",
    "list_type": "{path} must be a list",
    "string_type": "{path} must be a string",
    "float_type": "{path} must be a finite number",
    "finite_number": "{path} must be a finite number",
    "int_type": "{path} must be a whole number",
    "int_from_float": "{path} must be a whole number",
    "greater_than": "{path} must be greater than {gt}",
    "greater_than_equal": "{path} must not be below {ge}",
    "less_than_equal": "{path} must not be above {le}",
    "too_short": "{path} must be a non-empty list",
    "too_long": "{path} is too long (at most {max_length})",
    "string_too_short": "{path} must not be empty",
    "string_too_long": "{path} is too long (at most {max_length} characters)",
    "string_pattern_mismatch": "{path} does not match {pattern}",
    "literal_error": "{path} must be one of {expected}",
    "union_tag_invalid": "{path}.kind must be one of {expected_tags}",
    "union_tag_not_found": "{path}.kind is required",
}


def validation_message(error: ValidationError, prefix: str, given: Any) -> str:
    """The first problem of ``error`` as one sentence naming the field."""
    first = error.errors(include_url=False)[0]
    path = _path(prefix, first["loc"], given)
    kind = first["type"]
    if kind == "target_kind":
        return str(first["msg"])
    if kind == "value_error":
        # A domain check's reason names its own field first ("url contains..."): say it
        # once, with the whole path ("channels[0].url contains...").
        reason = str(first["msg"]).removeprefix("Value error, ")
        name = re.split(r"[.\[]", path)[-1] if path else ""
        if name and reason.startswith(f"{name} "):
            return f"{path}{reason[len(name) :]}"
        return f"{path}: {reason}"
    template = _MESSAGES.get(kind)
    if template is None:
        return f"{path}: {first['msg']}"
    context = dict(first.get("ctx") or {})
    if kind == "greater_than_equal" and context.get("ge") == 0:
        return f"{path} must be non-negative"
    try:
        return template.format(path=path, **context)
    except (KeyError, IndexError):
        return f"{path}: {first['msg']}"


def _parse(adapter: TypeAdapter[Any], raw: Any, field: str) -> Any:
    try:
        return adapter.validate_python(raw)
    except ValidationError as error:
        raise InvalidRule(validation_message(error, field, raw), field) from None


def parse_target(raw: Any) -> AnyTarget:
    """``{protocol, metric?, chain?}``, ``{token, metric?: price}`` or ``{chain_id}``."""
    target: AnyTarget = _parse(_TARGET, raw, "target")
    return target


def parse_condition(raw: Any) -> AnyCondition:
    condition: AnyCondition = _parse(_CONDITION, raw, "condition")
    return condition


def parse_channels(raw: Any) -> list[WebhookChannel | EmailChannel | WebsocketChannel]:
    channels: list[WebhookChannel | EmailChannel | WebsocketChannel] = _parse(
        _CHANNELS, raw, "channels"
    )
    return channels


def parse_cooldown(raw: Any) -> int:
    cooldown: int = _parse(_COOLDOWN, raw, "cooldown")
    return cooldown


# -- stored values (no validation: what was accepted once must load forever) ---------------


def stored_target(raw: Mapping[str, Any]) -> AnyTarget:
    if "chain_id" in raw:
        return MevTarget.model_construct(**raw)
    if "token" in raw:
        # A rule stored before token ids were normalised names its token as it was written.
        return TokenTarget.model_construct(**{**raw, "token": canonical_token_id(raw["token"])})
    return ProtocolTarget.model_construct(**raw)


def stored_condition(raw: Mapping[str, Any]) -> AnyCondition:
    if raw.get("kind") == "mev":
        return MevCondition.model_construct(**raw)
    if raw.get("kind") == "pct_change":
        return PctChangeCondition.model_construct(**raw)
    if raw.get("kind") == "anomaly":
        return AnomalyCondition.model_construct(**{"move": "fall", **raw})
    return ThresholdCondition.model_construct(**raw)


_CHANNEL_KINDS: Final[dict[str, type[BaseModel]]] = {
    "webhook": WebhookChannel,
    "email": EmailChannel,
    "websocket": WebsocketChannel,
}


def stored_channels(
    raw: Sequence[Mapping[str, Any]],
) -> list[WebhookChannel | EmailChannel | WebsocketChannel]:
    channels: list[Any] = [
        _CHANNEL_KINDS.get(str(channel.get("kind")), WebsocketChannel).model_construct(**channel)
        for channel in raw
    ]
    return channels


def public_channels(channels: Sequence[Any]) -> list[dict[str, Any]]:
    """Channels as they may be shown and logged: kind and destination, never the secret
    (``secret_set`` tells whether a webhook signs its deliveries). Takes channel values or
    their stored JSON objects."""
    shown = []
    for channel in channels:
        fields = channel.model_dump() if isinstance(channel, BaseModel) else dict(channel)
        public = {name: fields[name] for name in ("kind", "url", "address") if name in fields}
        if fields.get("kind") == "webhook":
            public["secret_set"] = bool(fields.get("secret"))
        shown.append(public)
    return shown
