"""What runs in a process: the role table, read by ``serve`` and ``worker ROLE`` alike.

Each row is one role: what it does, which ``worker`` process runs it alone, whether
``serve`` runs it, which loop feeds it the log, and, when several nodes share its store,
the PostgreSQL advisory lock that elects the one node that runs it. ``plan`` turns the
table and the settings into the loops a process starts (``entrypoints/node.py``); the
container (``entrypoints/container.py``) builds the objects of each loop. A new capability
adds a row here, not a new runtime module.

Every loop is supervised the same way (``node.supervise``): a crash is logged and the loop
restarted after a back-off of 0.2 s doubling to 5 s (back to 0.2 s after 30 s of health).
Elections only exist with ``DATABASE_URL`` (PostgreSQL advisory locks); embedded, there is
one process and it runs every role it plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from .settings import Settings

__all__ = [
    "ROLES",
    "WORKERS",
    "Follower",
    "Lock",
    "Loop",
    "Placement",
    "Role",
    "Stage",
    "plan",
]


class Follower(StrEnum):
    """Which loop of a process feeds a role the event log."""

    STORE = "the event store itself, from a stored position"
    NODE = "this node's follower"
    PROJECTOR = "the shared projector"
    OWN = "a follower of its own"
    TIMER = "a timer of its own (reads the log when it runs)"
    CHAINS = "the EVM chains' JSON-RPC nodes (EVM_CHAINS)"


class Stage(StrEnum):
    """Order on the node follower: what the hub waits for, the hub, what comes after it."""

    NONE = "-"
    BEFORE_HUB = "before the hub"
    HUB = "the hub"
    AFTER_HUB = "after the hub"


class InServe(StrEnum):
    """When ``serve`` runs a role."""

    ALWAYS = "always"
    WITHOUT_BROKER = "when AMQP_URL is unset"
    WITH_SHARED_HOT = "when REDIS_URL is set"
    WITH_EVM_CHAINS = "when EVM_CHAINS is set"
    WITH_RETENTION = "when HISTORY_DETAIL_RETENTION_DAYS is set"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class Lock:
    """A PostgreSQL session advisory lock: whoever holds it runs the role."""

    name: str
    key: int


RELAY_LOCK: Final = Lock("dr_relay", 0x64725F72656C6179)
PROJECTIONS_LOCK: Final = Lock("dr_proj", 0x64725F70726F6A)
ALERTS_LOCK: Final = Lock("dr_alert", 0x64725F616C657274)
NOTIFICATIONS_LOCK: Final = Lock("dr_noti", 0x64725F6E6F7469)
RECONCILE_LOCK: Final = Lock("dr_reco", 0x64725F7265636F)
ANOMALIES_LOCK: Final = Lock("dr_anom", 0x64725F616E6F6D)
EVM_LOCK: Final = Lock("dr_evm", 0x64725F65766D)
WEBHOOKS_LOCK: Final = Lock("dr_hook", 0x64725F686F6F6B)
MEV_LOCK: Final = Lock("dr_mev", 0x64725F6D6576)
RETENTION_LOCK: Final = Lock("dr_rete", 0x64725F72657465)


@dataclass(frozen=True, slots=True)
class Role:
    """One row of the table."""

    name: str
    does: str
    # The ``defi-realtime worker NAME`` process that runs it without the API (None: only
    # ``serve``). Several roles may share a worker (hot + history: ``projections``).
    worker: str | None
    in_serve: InServe
    # Where it runs; for a projection, where it runs while its store is local to the node.
    follower: Follower
    # The setting that makes its store shared between nodes (``redis_url``,
    # ``database_url``): the projection then moves to the shared projector.
    shared_when: str | None = None
    # Elected on this lock when DATABASE_URL is set (for a projection: while shared).
    lock: Lock | None = None
    stage: Stage = Stage.NONE


ROLES: Final[tuple[Role, ...]] = (
    Role(
        "relay",
        "publishes new log entries to the fan-out",
        worker="relay",
        in_serve=InServe.ALWAYS,
        follower=Follower.STORE,
        lock=RELAY_LOCK,
    ),
    Role(
        "hot",
        "current values, changes, rankings (REST reads)",
        worker="projections",
        in_serve=InServe.ALWAYS,
        follower=Follower.NODE,
        shared_when="redis_url",
        lock=PROJECTIONS_LOCK,
        stage=Stage.BEFORE_HUB,
    ),
    Role(
        "live",
        "the node's own fold of the log: facts of live frames, filters, snapshots "
        "(without REDIS_URL the hot role's store is this fold)",
        worker=None,
        in_serve=InServe.WITH_SHARED_HOT,
        follower=Follower.NODE,
        stage=Stage.BEFORE_HUB,
    ),
    Role(
        "realtime",
        "routes entries to WebSocket subscribers",
        worker=None,
        in_serve=InServe.ALWAYS,
        follower=Follower.NODE,
        stage=Stage.HUB,
    ),
    Role(
        "history",
        "every observation, listings, alert rules and transitions (series, alert listing)",
        worker="projections",
        in_serve=InServe.ALWAYS,
        follower=Follower.NODE,
        shared_when="database_url",
        lock=PROJECTIONS_LOCK,
        stage=Stage.AFTER_HUB,
    ),
    Role(
        "alerts",
        "evaluates alert rules, records their transitions",
        worker="alerts",
        in_serve=InServe.ALWAYS,
        follower=Follower.OWN,
        lock=ALERTS_LOCK,
    ),
    Role(
        "anomalies",
        "detects anomalies in TVL, volume, fees and prices, records AnomalyDetected",
        # Beside the alert evaluator: the same kind of work, no deployment change.
        worker="alerts",
        in_serve=InServe.ALWAYS,
        follower=Follower.OWN,
        lock=ANOMALIES_LOCK,
    ),
    Role(
        "notifications",
        "turns transitions into notification jobs (dispatcher) and delivers them",
        worker="notifications",
        in_serve=InServe.WITHOUT_BROKER,
        follower=Follower.OWN,
        lock=NOTIFICATIONS_LOCK,
    ),
    Role(
        "webhooks",
        "POSTs durable subscriptions delivered by webhook, a cursor each (ADR 0043)",
        # In serve: its filters read the node's fold of the log (a worker has none).
        worker=None,
        in_serve=InServe.ALWAYS,
        follower=Follower.TIMER,
        lock=WEBHOOKS_LOCK,
    ),
    Role(
        "reconcile",
        "compares the read models with the log every RECONCILE_INTERVAL, repairs drift (ADR 0035)",
        worker="reconcile",
        in_serve=InServe.ALWAYS,
        follower=Follower.TIMER,
        lock=RECONCILE_LOCK,
    ),
    Role(
        "retention",
        "drops the history's raw observations older than HISTORY_DETAIL_RETENTION_DAYS "
        "every HISTORY_RETENTION_INTERVAL (ADR 0047)",
        # Beside reconciliation: the same kind of periodic upkeep of the read models.
        worker="reconcile",
        in_serve=InServe.WITH_RETENTION,
        follower=Follower.TIMER,
        lock=RETENTION_LOCK,
    ),
    Role(
        "evm",
        "follows the EVM_CHAINS behind their confirmations: blocks, swaps, pool TVL; "
        "retracts what a reorg orphaned (ADR 0048)",
        worker="evm",
        in_serve=InServe.WITH_EVM_CHAINS,
        follower=Follower.CHAINS,
        lock=EVM_LOCK,
    ),
    Role(
        "mev",
        "detects sandwiches and cyclic arbitrage in the recorded blocks, records MevDetected; "
        "retracts what a reorg orphaned (ADR 0050)",
        # Beside the collectors it reads: no deployment change.
        worker="evm",
        in_serve=InServe.WITH_EVM_CHAINS,
        follower=Follower.OWN,
        lock=MEV_LOCK,
    ),
)

WORKERS: Final[tuple[str, ...]] = tuple(
    dict.fromkeys(role.worker for role in ROLES if role.worker is not None)
)
"""The ``worker`` processes there are: ``relay``, ``projections``, ``alerts``,
``notifications``, ``reconcile``, ``evm``."""


@dataclass(frozen=True, slots=True)
class Placement:
    """A role as a given process runs it under given settings."""

    role: Role
    follower: Follower
    lock: Lock | None  # None: not elected (per node, or embedded)


@dataclass(frozen=True, slots=True)
class Loop:
    """One supervised task of a process and the roles it carries."""

    name: str
    follower: Follower
    roles: tuple[Role, ...]
    lock: Lock | None


def _runs(role: Role, process: str, settings: Settings) -> bool:
    if process != "serve":
        return role.worker == process
    if role.in_serve is InServe.WITHOUT_BROKER:
        return settings.amqp_url is None
    if role.in_serve is InServe.WITH_SHARED_HOT:
        return settings.redis_url is not None
    if role.in_serve is InServe.WITH_EVM_CHAINS:
        return bool(settings.evm_chains.strip())
    if role.in_serve is InServe.WITH_RETENTION:
        return settings.history_detail_retention_days is not None
    return role.in_serve is InServe.ALWAYS


def _place(role: Role, process: str, settings: Settings) -> Placement:
    elections = settings.database_url is not None
    if role.shared_when is None:
        return Placement(role, role.follower, role.lock if elections else None)
    shared = getattr(settings, role.shared_when) is not None
    if shared or process != "serve":
        # A shared store is written by one node (elected); a worker process has no node
        # follower, so it applies even a local store on its projector.
        return Placement(role, Follower.PROJECTOR, role.lock if shared and elections else None)
    return Placement(role, Follower.NODE, None)


def plan(process: str, settings: Settings) -> tuple[Placement, ...]:
    """The roles ``process`` (``serve`` or a worker name) runs under ``settings``."""
    if process != "serve" and process not in WORKERS:
        raise ValueError(f"unknown process {process!r}; expected serve or one of {WORKERS}")
    return tuple(
        _place(role, process, settings) for role in ROLES if _runs(role, process, settings)
    )


def loops(placements: Sequence[Placement]) -> tuple[Loop, ...]:
    """The supervised tasks that carry ``placements``: the relay, the node follower, the
    shared projector (one loop for every shared projection) and one per ``OWN`` role."""
    grouped: dict[str, list[Placement]] = {}
    for placement in placements:
        if placement.follower in (Follower.OWN, Follower.TIMER, Follower.CHAINS):
            key = placement.role.name
        else:
            key = {
                Follower.STORE: "relay",
                Follower.NODE: "node-follower",
                Follower.PROJECTOR: "projector",
            }[placement.follower]
        grouped.setdefault(key, []).append(placement)
    result = []
    for name, members in grouped.items():
        locks = {placement.lock for placement in members if placement.lock is not None}
        if len(locks) > 1:  # pragma: no cover - the table puts one lock per loop
            raise ValueError(f"loop {name} would need two locks: {locks}")
        result.append(
            Loop(
                name,
                members[0].follower,
                tuple(placement.role for placement in members),
                next(iter(locks), None),
            )
        )
    return tuple(result)


def describe(process: str, settings: Settings) -> list[dict[str, str]]:
    """The plan as rows a person reads (``defi-realtime roles``)."""
    return [
        {
            "role": placement.role.name,
            "does": placement.role.does,
            "follows": placement.follower.value,
            "stage": placement.role.stage.value
            if placement.follower is Follower.NODE
            else Stage.NONE.value,
            "elected on": placement.lock.name if placement.lock else "no",
        }
        for placement in plan(process, settings)
    ]
