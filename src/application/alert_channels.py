"""Checks on a rule's channels that need the node's configuration: webhook targets.

The domain validates a channel's form (``WebhookChannel``: an http(s) URL); whether this node
may call the URL is the SSRF guard's decision (``WebhookTargets``), asked here when a rule is
created or its channels change, so that a rule that could never be delivered is refused at
once (400) instead of dead-lettering every notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..domain.alert_values import InvalidRule, WebhookChannel
from .delivery import WebhookTargetRefused
from .ports import WebhookTargets

__all__ = ["check_webhook_targets"]


async def check_webhook_targets(targets: WebhookTargets, channels: Sequence[Any] | None) -> None:
    """Raise ``InvalidRule`` (field ``channels[i].url``) for the first webhook channel
    whose URL the guard refuses; ``channels`` None (not changed) passes."""
    for index, channel in enumerate(channels or ()):
        if not isinstance(channel, WebhookChannel):
            continue
        field = f"channels[{index}].url"
        try:
            await targets.check_new(channel.url)
        except WebhookTargetRefused as refused:
            raise InvalidRule(
                f"{field} is refused: {refused} (webhooks may only call public addresses "
                "unless ALLOW_PRIVATE_WEBHOOKS is set)",
                field,
            ) from None
