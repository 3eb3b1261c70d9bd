"""A validator, not a gate: what looks wrong in the current data, flagged, never dropped.

Three checks over the protocols' current views:

* ``chains_do_not_add_up``: a protocol reports per-chain TVL whose sum differs from its
  total by more than ``ADD_UP_TOLERANCE`` (relative; a dollar at least).
* ``sudden_jump``: its TVL moved by ``JUMPS[window]`` percent or more over 1 hour or 1 day
  (the changes of ADR 0006).
* ``stale``: its TVL was last observed more than ``STALE_AFTER`` before the freshest TVL
  in the system (data time, not the wall clock: an import of old captures is not stale as a
  whole, the protocols that stopped reporting in it are).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .views import ProtocolView

__all__ = [
    "ADD_UP_TOLERANCE",
    "JUMPS",
    "KINDS",
    "STALE_AFTER",
    "Finding",
    "Kind",
    "check",
]

Kind = Literal["chains_do_not_add_up", "sudden_jump", "stale"]
KINDS: Final[tuple[Kind, ...]] = ("chains_do_not_add_up", "sudden_jump", "stale")
ADD_UP_TOLERANCE: Final = 0.01
JUMPS: Final[dict[str, float]] = {"change_1h": 20.0, "change_1d": 50.0}
STALE_AFTER: Final = 2 * 86_400.0


@dataclass(frozen=True, slots=True)
class Finding:
    protocol: str
    kind: Kind
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def _adds_up(view: ProtocolView) -> Finding | None:
    if view.tvl is None or not view.chain_tvls:
        return None
    chains = math.fsum(view.chain_tvls.values())
    gap = chains - view.tvl
    if abs(gap) <= max(ADD_UP_TOLERANCE * view.tvl, 1.0):
        return None
    share = None if view.tvl == 0 else gap / view.tvl * 100.0
    return Finding(
        view.slug,
        "chains_do_not_add_up",
        f"its chains sum to {chains:,.0f} USD against a total of {view.tvl:,.0f} USD",
        {"tvl": view.tvl, "chains_sum": chains, "difference_percent": share},
    )


def _jumps(view: ProtocolView) -> Iterable[Finding]:
    for window, limit in JUMPS.items():
        change = getattr(view, window)
        if change is not None and abs(change) >= limit:
            yield Finding(
                view.slug,
                "sudden_jump",
                f"its TVL moved {change:+.1f}% ({window}), {limit:.0f}% or more",
                {"window": window, "change_percent": change, "tvl": view.tvl},
            )


def check(views: Iterable[ProtocolView]) -> list[Finding]:
    """Every finding about ``views``, by protocol then kind."""
    views = list(views)
    freshest = max((view.tvl_at for view in views if view.tvl_at is not None), default=None)
    findings: list[Finding] = []
    for view in sorted(views, key=lambda view: view.slug):
        added = _adds_up(view)
        if added is not None:
            findings.append(added)
        findings.extend(_jumps(view))
        if freshest is not None and view.tvl_at is not None:
            behind = freshest - view.tvl_at
            if behind > STALE_AFTER:
                findings.append(
                    Finding(
                        view.slug,
                        "stale",
                        f"its TVL was last observed {behind / 86_400:.1f} days before the "
                        "freshest TVL",
                        {"tvl_at": view.tvl_at, "freshest_at": freshest, "behind_seconds": behind},
                    )
                )
    return findings
