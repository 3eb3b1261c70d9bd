"""The pure domain core: aggregates and their events, usable as a library.

Imports only the standard library, ``eventsourcing.domain`` and pydantic (checked by the
architecture contract in CI), so another service can record and fold protocol metrics,
prices and alert rules with ``pip install defi-realtime`` and none of the server's
dependencies (see ``docs/domain-library.md``). What is listed in ``__all__`` is the public
API; the submodules hold the rest.
"""

from __future__ import annotations

from .account import Account, legacy_account_id
from .alert_rule import (
    AlertRule,
    Firing,
    RuleBook,
    RuleQuotaExceeded,
    RuleState,
    condition_met,
    next_transition,
)
from .alert_values import (
    Channel,
    Channels,
    Condition,
    EmailChannel,
    InvalidRule,
    PctChangeCondition,
    ProtocolTarget,
    RuleTarget,
    ThresholdCondition,
    TokenTarget,
    WebhookChannel,
    WebsocketChannel,
    parse_channels,
    parse_condition,
    parse_cooldown,
    parse_target,
)
from .anomaly import AnomalyLog
from .api_key import (
    TIER_LIMITS,
    ApiKey,
    InvalidAllowList,
    InvalidTier,
    Tier,
    TierLimits,
    hash_key,
)
from .chains import ChainInfo, canonical_chain, chain_info, chain_key, known_chains
from .errors import DomainError, InvalidObservation, InvalidTransition
from .evm import EvmChain, ReorgDetected, ReorgTooDeep
from .observations import METRICS, OBSERVED_AT_RANGE, TOTAL, Metric
from .protocol import SLUG_PATTERN, Protocol, check_slug, is_slug, slugify
from .recent import RECENT_PER_SERIES, StoredObservations
from .subscription import (
    CHANNELS,
    InvalidSubscription,
    Subscription,
    SubscriptionBook,
    SubscriptionNameTaken,
    SubscriptionQuotaExceeded,
)
from .token import TOKEN_ID_PATTERN, Token, canonical_token_id, check_token_id

__all__ = [
    "CHANNELS",
    "METRICS",
    "OBSERVED_AT_RANGE",
    "RECENT_PER_SERIES",
    "SLUG_PATTERN",
    "TIER_LIMITS",
    "TOKEN_ID_PATTERN",
    "TOTAL",
    "Account",
    "AlertRule",
    "AnomalyLog",
    "ApiKey",
    "ChainInfo",
    "Channel",
    "Channels",
    "Condition",
    "DomainError",
    "EmailChannel",
    "EvmChain",
    "Firing",
    "InvalidAllowList",
    "InvalidObservation",
    "InvalidRule",
    "InvalidSubscription",
    "InvalidTier",
    "InvalidTransition",
    "Metric",
    "PctChangeCondition",
    "Protocol",
    "ProtocolTarget",
    "ReorgDetected",
    "ReorgTooDeep",
    "RuleBook",
    "RuleQuotaExceeded",
    "RuleState",
    "RuleTarget",
    "StoredObservations",
    "Subscription",
    "SubscriptionBook",
    "SubscriptionNameTaken",
    "SubscriptionQuotaExceeded",
    "ThresholdCondition",
    "Tier",
    "TierLimits",
    "Token",
    "TokenTarget",
    "WebhookChannel",
    "WebsocketChannel",
    "canonical_chain",
    "canonical_token_id",
    "chain_info",
    "chain_key",
    "check_slug",
    "check_token_id",
    "condition_met",
    "hash_key",
    "is_slug",
    "known_chains",
    "legacy_account_id",
    "next_transition",
    "parse_channels",
    "parse_condition",
    "parse_cooldown",
    "parse_target",
    "slugify",
]
