"""Configuration from environment variables (pydantic-settings). No I/O here."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse
from uuid import UUID

import platformdirs
from pydantic import Field, computed_field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """Where the embedded stores live when ``DATA_DIR`` is unset: the user's data directory
    (``~/.local/share/defi-realtime`` on Linux), the same whichever directory a command is
    run from, so ``serve`` and ``keys create`` always find the same store."""
    return platformdirs.user_data_path("defi-realtime")


class Settings(BaseSettings):
    """Everything selectable without code edits. Unset URLs mean embedded adapters:
    SQLite files under ``DATA_DIR`` and in-process projections and fan-out.

    Read from the environment, then from a ``.env`` file in the working directory (the
    environment wins). Each field's description is its entry in the configuration
    reference (``defi-realtime config --reference``, docs/configuration.md).
    """

    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        populate_by_name=True,
        env_file=".env",
        env_file_encoding="utf-8",
    )

    # --- stores and services
    data_dir: Path = Field(
        default_factory=default_data_dir,
        alias="DATA_DIR",
        description="Directory of the embedded stores (SQLite event store and read models). "
        "Default: the user's data directory, e.g. ~/.local/share/defi-realtime.",
    )
    database_url: str | None = Field(
        default=None,
        alias="DATABASE_URL",
        description="postgresql:// URL of the event store and read models; unset: SQLite "
        "files under DATA_DIR.",
    )
    redis_url: str | None = Field(
        default=None,
        alias="REDIS_URL",
        description="redis:// URL of the shared hot projection and query cache; unset: in-process.",
    )
    amqp_url: str | None = Field(
        default=None,
        alias="AMQP_URL",
        description="amqp:// URL of RabbitMQ, which carries the log between processes and "
        "the notification work queue; unset: in-process.",
    )
    redis_prefix: str = Field(
        default="dr:", alias="REDIS_PREFIX", description="Prefix of every Redis key."
    )
    amqp_exchange: str = Field(
        default="defi-realtime.events",
        alias="AMQP_EXCHANGE",
        description="RabbitMQ topic exchange the relay publishes the log on.",
    )
    stock_postgres_recorder: bool = Field(
        default=False,
        alias="STOCK_POSTGRES_RECORDER",
        description="Use eventsourcing's stock PostgreSQL recorder instead of the batched "
        "one (for comparison only).",
    )
    node_id: str | None = Field(
        default=None,
        alias="NODE_ID",
        description="This process's name in its RabbitMQ queue and connection; default: host "
        "name, PID and a random suffix.",
    )

    # --- HTTP
    host: str = Field(default="127.0.0.1", alias="HOST", description="Bind address of serve.")
    port: int = Field(default=8000, alias="PORT", description="Port of serve.")
    require_key_for_reads: bool = Field(
        default=False,
        alias="REQUIRE_KEY_FOR_READS",
        description="Require an API key on reads of market data too (writes always need one).",
    )
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024,
        alias="MAX_BODY_BYTES",
        description="Largest request body accepted (413 beyond).",
    )
    http_header_timeout: float = Field(
        default=10.0,
        gt=0,
        alias="HTTP_HEADER_TIMEOUT",
        description="Seconds a client has to send a whole request head (request line and "
        "headers, also of a WebSocket handshake) from connecting or from the end of its "
        "previous response; then 408 and the connection is dropped.",
    )

    cors_allow_origins: str = Field(
        default="",
        alias="CORS_ALLOW_ORIGINS",
        description="Comma-separated origins whose browsers may call the REST API (CORS); * "
        "for any; empty: none.",
    )

    # --- rate limits (entrypoints/rate_limits.py, ADR 0036)
    rate_limits: bool = Field(
        default=True,
        alias="RATE_LIMITS",
        description="on: every REST route but /health* and /metrics, and every WebSocket "
        "message, spends its caller's budget (a key's tier's requests per minute; without a "
        "key RATE_LIMIT_ANONYMOUS by client address), in Redis when REDIS_URL is set (shared "
        "by every node), else in process; 429 with Retry-After beyond. off: no limits.",
    )
    rate_limit_strategy: Literal["moving-window", "sliding-window"] = Field(
        default="sliding-window",
        alias="RATE_LIMIT_STRATEGY",
        description="The limits library's strategy: sliding-window (a weighted pair of "
        "counters per caller: constant memory and cost, the previous minute assumed evenly "
        "spread) or moving-window (exact; one stored entry per hit, up to the budget: ~1 MB "
        "in Redis for an enterprise key; ADR 0036).",
    )
    rate_limit_lease: float = Field(
        default=0.01,
        ge=0,
        le=0.5,
        alias="RATE_LIMIT_LEASE",
        description="With REDIS_URL: share of a budget a node takes from Redis at once and "
        "spends in process for up to a second (budgets under 2/share, e.g. the free tier's, "
        "are counted exactly); 0: every hit is a round trip to Redis.",
    )
    rate_limit_anonymous: int = Field(
        default=120,
        ge=1,
        alias="RATE_LIMIT_ANONYMOUS",
        description="Requests per minute of a client address without a key (WebSocket "
        "messages have a budget of the same size apart).",
    )
    rate_limit_auth_failures: int = Field(
        default=10,
        ge=1,
        alias="RATE_LIMIT_AUTH_FAILURES",
        description="Failed authentications (401 answers, refused WebSocket keys) per minute "
        "a client address may cause; beyond, everything from it is refused (429, or close "
        "4029 on a handshake), valid keys too, until its oldest failure is a minute old.",
    )
    ws_anonymous_sockets: int = Field(
        default=20,
        ge=1,
        alias="WS_ANONYMOUS_SOCKETS",
        description="WebSocket connections one client address may hold open without a key "
        "(close 4029 beyond), on all nodes together when REDIS_URL is set, per node otherwise; "
        "with a key its tier's limit applies.",
    )
    # --- accounts and keys (docs/accounts.md)
    session_secret: str | None = Field(
        default=None,
        alias="SESSION_SECRET",
        description="Secret that signs session tokens (POST /v2/auth/token, HS256); unset: "
        "one generated once and kept in DATA_DIR/session-secret. Nodes that do not share "
        "DATA_DIR must all be given the same value.",
    )
    session_token_ttl: float = Field(
        default=900.0,
        gt=0,
        le=86_400,
        alias="SESSION_TOKEN_TTL",
        description="Seconds a session token is valid after it is minted (never beyond the "
        "grace period of a rotated-out key, and never after its key is revoked).",
    )
    key_rotation_grace: float = Field(
        default=86_400.0,
        ge=0,
        alias="KEY_ROTATION_GRACE",
        description="Seconds a rotated-out key keeps working, when keys rotate is not "
        "given --grace.",
    )
    admin_key_ids: str = Field(
        default="",
        alias="ADMIN_KEY_IDS",
        description="Comma-separated ids of API keys (keys list) that are admin keys: "
        "GET /v2/audit shows them every account's records, not only their own.",
    )
    trusted_proxies: str = Field(
        default="",
        alias="TRUSTED_PROXIES",
        description="Comma-separated addresses or networks (CIDR) of reverse proxies whose "
        "X-Forwarded-For header names the client (IP allow-lists, rate limits, logs); "
        "empty: the peer address is the client.",
    )

    # --- WebSocket
    ws_transport: str = Field(
        default="lean",
        alias="WS_TRANSPORT",
        description="lean (our asyncio protocol under uvicorn, ~10 KB a socket) or asgi "
        "(Starlette's WebSocket over uvicorn's websockets implementation).",
    )
    ws_queue_size: int = Field(
        default=1_000,
        alias="WS_QUEUE_SIZE",
        description="Frames queued per connection before its subscriptions catch up from "
        "the log at the client's pace.",
    )
    ws_send_timeout: float = Field(
        default=10.0,
        gt=0,
        alias="WS_SEND_TIMEOUT",
        description="Seconds a client whose queue is full may go without reading before it "
        "is closed (4008); one that keeps reading is never closed for being behind.",
    )
    subscription_webhook_interval: float = Field(
        default=0.5,
        gt=0,
        le=60,
        alias="SUBSCRIPTION_WEBHOOK_INTERVAL",
        description="Seconds between two rounds of the webhook delivery of durable "
        "subscriptions (each round POSTs what each subscription's log range matched since "
        "its stored position); a failing webhook waits by the NOTIFY_BACKOFF_* policy.",
    )
    subscription_ack_interval: float = Field(
        default=0.5,
        gt=0,
        le=60,
        alias="SUBSCRIPTION_ACK_INTERVAL",
        description="Seconds the acknowledgements of durable subscriptions are gathered "
        "before they are written together (one event per subscription per interval); a "
        "node that crashes loses at most this much, which is then delivered again.",
    )
    ws_idle_timeout: float = Field(
        default=120.0,
        alias="WS_IDLE_TIMEOUT",
        description="Seconds without anything from a client (frames or pongs) before it is closed.",
    )
    ws_heartbeat_interval: float = Field(
        default=20.0,
        alias="WS_HEARTBEAT_INTERVAL",
        description="Seconds between the server's pings.",
    )
    ws_allowed_origins: str = Field(
        default="",
        alias="WS_ALLOWED_ORIGINS",
        description="Comma-separated Origin values allowed on the handshake; empty allows "
        "any (requests without an Origin header, i.e. not from a browser, are always allowed).",
    )
    ws_send_buffer: int = Field(
        default=256 * 1024,
        alias="WS_SEND_BUFFER",
        description="Kernel send buffer of each socket in bytes (lean transport; 0 keeps the "
        "OS default): bounds the kernel memory a client that stops reading can pin.",
    )
    ws_max_message: int = Field(
        default=1024 * 1024,
        alias="WS_MAX_MESSAGE",
        description="Largest client message in bytes (close 1009 beyond).",
    )

    # --- following the log
    poll_interval: float = Field(
        default=0.5,
        alias="POLL_INTERVAL",
        description="Seconds between polls of the event store by followers that have no "
        "notification (SQLite, or PostgreSQL without LISTEN).",
    )
    metrics_interval: float = Field(
        default=5.0,
        gt=0,
        alias="METRICS_INTERVAL",
        description="Seconds between writes of every process's gauges and tallies for /metrics "
        "(besides on each scrape).",
    )
    gc_thresholds: str = Field(
        default="700,10,1000",
        alias="GC_THRESHOLDS",
        description="The cyclic garbage collector's thresholds gen0,gen1,gen2 while a node "
        "runs (ADR 0012): full collections made rare, since one over 10,000 sockets stalls "
        "every update ~220 ms.",
    )
    gc_freeze: bool = Field(
        default=True,
        alias="GC_FREEZE",
        description="Once a node is ready, collect and then freeze (gc.freeze) every object "
        "alive: its code, settings and start-up state, most of what it tracks until "
        "clients connect, are never scanned again by a full collection (ADR 0044). Cyclic "
        "garbage among those objects is never reclaimed; false turns it off.",
    )
    gc_refreeze: bool = Field(
        default=True,
        alias="GC_REFREEZE",
        description="Also freeze what survives every full collection (with GC_FREEZE): the "
        "next one scans only objects made since, not the connections held (ADR 0044, 0054). "
        "Also freezes after a young collection once 1,000 sockets were opened since the "
        "last freeze, so a burst of connections is never scanned (ADR 0057). An object "
        "alive at a freeze that later dies in a reference cycle is reclaimed only by the "
        "next rescan (GC_RESCAN_GROWTH, GC_RESCAN_EVERY); false turns it off.",
    )
    gc_rescan_every: int = Field(
        default=0,
        ge=0,
        alias="GC_RESCAN_EVERY",
        description="With GC_REFREEZE, also every Nth full collection unfreezes first and "
        "scans every object (ADR 0054), whatever the frozen objects' growth: a pause as "
        "long as with no freeze at all. 0: never (GC_RESCAN_GROWTH decides).",
    )
    gc_rescan_growth: float = Field(
        default=0.25,
        ge=0,
        alias="GC_RESCAN_GROWTH",
        description="With GC_REFREEZE, a full collection unfreezes first and scans every "
        "object, reclaiming cyclic garbage frozen while it was alive, after one that ended "
        "with the interpreter's allocated memory blocks grown by more than this fraction "
        "since the last such scan, not counting what grew until a burst freeze of "
        "connections (ADR 0058): a node whose memory holds steady never pays that pause. "
        "0: never by growth.",
    )
    gc_rescan_warmup: float = Field(
        default=1800.0,
        ge=0,
        alias="GC_RESCAN_WARMUP",
        description="Seconds after ready in which the memory a full collection leaves (and "
        "the first one's after them) is the mark GC_RESCAN_GROWTH counts from, not growth "
        "(ADR 0059): a node whose state fills after it starts (a first start, from an "
        "empty log) pays no rescan for it. 0: growth counts from ready.",
    )

    # --- alert delivery (application/notifications.py)
    amqp_notifications: str = Field(
        default="defi-realtime.notifications",
        alias="AMQP_NOTIFICATIONS",
        description="Name of the notification work queue's exchange and queues (.work, "
        ".retry.<n>.<ms>ms, .dead).",
    )
    allow_private_webhooks: bool = Field(
        default=False,
        alias="ALLOW_PRIVATE_WEBHOOKS",
        description="Allow webhooks to private, loopback and link-local addresses (off: "
        "refused, against SSRF: IP literals and localhost when a rule is created, every "
        "address at delivery).",
    )
    webhook_allowed_hosts: str = Field(
        default="",
        alias="WEBHOOK_ALLOWED_HOSTS",
        description="Comma-separated host names (or IP literals) webhooks may call, alert "
        "rules' and durable subscriptions' alike; any other is refused when the rule or "
        "subscription is created (400) and at delivery, without asking DNS. Empty: any "
        "public host.",
    )
    webhook_timeout: float = Field(
        default=10.0, alias="WEBHOOK_TIMEOUT", description="Seconds a webhook call may take."
    )
    smtp_host: str | None = Field(
        default=None,
        alias="SMTP_HOST",
        description="SMTP server of email notifications; unset: email deliveries are "
        "dead-lettered.",
    )
    smtp_port: int = Field(default=25, alias="SMTP_PORT", description="SMTP port.")
    smtp_from: str = Field(
        default="alerts@defi-realtime.invalid",
        alias="SMTP_FROM",
        description="From address of notification emails.",
    )
    smtp_starttls: bool = Field(
        default=False, alias="SMTP_STARTTLS", description="Use STARTTLS with the SMTP server."
    )
    smtp_username: str | None = Field(
        default=None, alias="SMTP_USERNAME", description="SMTP login, if the server needs one."
    )
    smtp_password: str | None = Field(
        default=None, alias="SMTP_PASSWORD", description="SMTP password (a secret)."
    )
    notify_max_attempts: int = Field(
        default=8,
        ge=1,
        le=50,
        alias="NOTIFY_MAX_ATTEMPTS",
        description="Delivery attempts of a notification before it is dead-lettered.",
    )
    notify_backoff_base: float = Field(
        default=1.0,
        ge=0,
        alias="NOTIFY_BACKOFF_BASE",
        description="Delivery retries wait base x 2^(n-1) seconds (capped by "
        "NOTIFY_BACKOFF_MAX), minus up to NOTIFY_JITTER of it; then the notification is "
        "dead-lettered.",
    )
    notify_backoff_max: float = Field(
        default=3_600.0,
        ge=0,
        alias="NOTIFY_BACKOFF_MAX",
        description="Longest wait between two attempts, in seconds.",
    )
    notify_jitter: float = Field(
        default=0.2,
        ge=0,
        le=1,
        alias="NOTIFY_JITTER",
        description="Share (0-1) of each retry wait that may be taken off at random.",
    )
    notify_concurrency: int = Field(
        default=16,
        ge=1,
        alias="NOTIFY_CONCURRENCY",
        description="Notifications delivered at once by one process.",
    )

    # --- anomaly detection (application/anomaly.py, docs/anomalies.md)
    anomaly_method: Literal["robust_z", "cusum"] = Field(
        default="robust_z",
        alias="ANOMALY_METHOD",
        description="How the anomaly detector scores a series: robust_z (distance of the "
        "log return per sqrt(day) from the median of the last ANOMALY_WINDOW returns, in "
        "robust standard deviations) or cusum (accumulated drift); see ADR 0034.",
    )
    anomaly_window: int = Field(
        default=30,
        ge=3,
        le=1_000,
        alias="ANOMALY_WINDOW",
        description="Returns kept per series by the anomaly detector (its state is bounded "
        "by this).",
    )
    anomaly_threshold: float = Field(
        default=6.0,
        gt=0,
        alias="ANOMALY_THRESHOLD",
        description="Score from which an observation is recorded as an AnomalyDetected "
        "event (an alert rule of kind anomaly may ask for more with min_score).",
    )

    # --- operations (entrypoints/startup.py, application/readiness.py, entrypoints/logs.py)
    startup_check_timeout: float = Field(
        default=2.0,
        gt=0,
        alias="STARTUP_CHECK_TIMEOUT",
        description="Seconds each service a command uses (PostgreSQL, Redis, RabbitMQ) has "
        "to answer when the command starts; then it exits with status 69 and one line naming "
        "the service.",
    )
    ready_timeout: float = Field(
        default=1.0,
        gt=0,
        alias="READY_TIMEOUT",
        description="Seconds each check of /health/ready may take (they run concurrently).",
    )
    ready_max_lag: int = Field(
        default=10_000,
        ge=0,
        alias="READY_MAX_LAG",
        description="Log positions a running projection may be behind the head and the node "
        "still be ready (/health/ready).",
    )
    # --- checkpoints of in-memory state (ADR 0046)
    checkpoint_events: int = Field(
        default=200_000,
        ge=0,
        alias="CHECKPOINT_EVENTS",
        description="Log positions after which the node's hot state and the anomaly "
        "detector write a checkpoint to DATA_DIR/checkpoints (0: not by count); a restart "
        "loads it and replays only the log after it. A clean shutdown always writes one.",
    )
    checkpoint_interval: float = Field(
        default=300.0,
        ge=0,
        alias="CHECKPOINT_INTERVAL",
        description="Seconds after which a checkpoint is written when the position moved "
        "since the last one (0: not by time).",
    )
    # --- history retention (ADR 0047, docs/runbook.md)
    history_detail_retention_days: float | None = Field(
        default=None,
        gt=0,
        alias="HISTORY_DETAIL_RETENTION_DAYS",
        description="Drop the history's raw observations (protocol metrics and prices) "
        "observed more than this many days ago: whole weekly partitions on PostgreSQL, "
        "bounded deletes on SQLite. Unset: keep everything. The event log and the rollups "
        "(series states, day closes, group days) are never dropped; reads of raw points "
        "before the horizon answer 410 detail_expired.",
    )
    history_retention_interval: float = Field(
        default=3_600.0,
        gt=0,
        alias="HISTORY_RETENTION_INTERVAL",
        description="Seconds between retention runs (with HISTORY_DETAIL_RETENTION_DAYS), "
        "in the elected retention role of serve or worker reconcile.",
    )
    # --- reconciliation (ADR 0035, docs/reconciliation.md)
    reconcile_interval: float = Field(
        default=3_600.0,
        gt=0,
        alias="RECONCILE_INTERVAL",
        description="Seconds between reconciliation runs (the read models compared with the "
        "event log, drift repaired), counted from the last recorded run.",
    )
    reconcile_upstream_url: str | None = Field(
        default=None,
        alias="RECONCILE_UPSTREAM_URL",
        description="Base URL of a DeFiLlama-compatible API whose /protocols total TVLs "
        "reconciliation compares with the log's (reported, never repaired); unset: none.",
    )
    reconcile_upstream_tolerance: float = Field(
        default=0.01,
        ge=0,
        alias="RECONCILE_UPSTREAM_TOLERANCE",
        description="Relative difference of a protocol's TVL from the upstream's that "
        "reconciliation still counts as equal (upstream moves between polls).",
    )
    # --- on-chain collection (ADR 0048, docs/onchain.md)
    evm_chains: str = Field(
        default="",
        alias="EVM_CHAINS",
        description="JSON list of the EVM chains to collect from: each with chain_id, name, "
        "rpc_urls (tried in turn), confirmations (12), start_block (0), max_blocks_per_step "
        "(100), requests_per_second (20), poll_interval (2 s), pools (address, protocol, "
        "protocol_name, kind v2|v3, token0, token1) and tokens (address, symbol, decimals, "
        "usd for a fixed price). Empty: no EVM collector runs.",
    )
    smart_money_model: Path | None = Field(
        default=None,
        alias="SMART_MONEY_MODEL",
        description="The JSON file of the smart-money model `defi-realtime smart-money "
        "train` writes and GET /v2/analytics/smart-money?ranking=model reads (docs/onchain.md). "
        "Unset: smart-money-model.json in DATA_DIR.",
    )
    smart_money_ws_refresh: float = Field(
        default=30.0,
        ge=0.1,
        le=3_600,
        alias="SMART_MONEY_WS_REFRESH",
        description="Seconds between two rankings of the top wallets whose trades the "
        "smart-money WebSocket channel streams (each node ranks from the history read "
        "model's wallet moves; a wallet entering the top shows from the next ranking).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info",
        alias="LOG_LEVEL",
        description="Level of every role's logs, uvicorn's included (serve --log-level "
        "overrides it).",
    )
    log_format: Literal["json", "text"] = Field(
        default="json",
        alias="LOG_FORMAT",
        description="json: one JSON object a line (time, level, logger, message, "
        "request_id, ...); text: one plain line each.",
    )

    @field_validator("evm_chains")
    @classmethod
    def _evm_chains(cls, value: str) -> str:
        from .evm_settings import parse_chains  # pydantic models of the entries

        parse_chains(value)
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("gc_thresholds")
    @classmethod
    def _three_positive_counts(cls, value: str) -> str:
        parts = [part.strip() for part in value.split(",")]
        if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise ValueError(f"expected three positive integers like 700,10,1000, got {value!r}")
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def collector_thresholds(self) -> tuple[int, int, int]:
        """``GC_THRESHOLDS`` as the three numbers ``gc.set_threshold`` takes."""
        gen0, gen1, gen2 = (int(part) for part in self.gc_thresholds.split(","))
        return gen0, gen1, gen2

    @computed_field  # type: ignore[prop-decorator]
    @property
    def event_store_env(self) -> dict[str, str]:
        """eventsourcing's environment for the chosen event store."""
        if self.database_url is None:
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.data_dir / "events.sqlite"),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        url = urlparse(self.database_url)
        if url.scheme.split("+")[0] not in ("postgres", "postgresql"):
            raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {url.scheme!r}")
        module = (
            "eventsourcing.postgres"
            if self.stock_postgres_recorder
            else "defi_realtime.adapters.postgres_event_store"
        )
        env = {
            "PERSISTENCE_MODULE": module,
            "POSTGRES_DBNAME": (url.path or "/postgres").lstrip("/") or "postgres",
            "POSTGRES_HOST": url.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(url.port or 5432),
            "POSTGRES_USER": unquote(url.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(url.password or ""),
            # Two kept open (the writer and a reader), up to eight more in a burst, closed
            # after a minute idle (adapters/postgres_event_store.py): PostgreSQL's
            # connections are shared by every process of a deployment.
            "POSTGRES_POOL_SIZE": "2",
            "POSTGRES_MAX_OVERFLOW": "8",
        }
        return env

    @computed_field  # type: ignore[prop-decorator]
    @property
    def smart_money_model_path(self) -> Path:
        """Where the smart-money model is kept (``SMART_MONEY_MODEL`` or in ``DATA_DIR``)."""
        return self.smart_money_model or self.data_dir / "smart-money-model.json"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def history_url(self) -> str:
        """SQLAlchemy URL of the history read model (same database as the event store)."""
        if self.database_url is None:
            return f"sqlite:///{self.data_dir / 'history.sqlite'}"
        url = urlparse(self.database_url)
        return url._replace(scheme="postgresql+psycopg").geturl()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def allowed_origins(self) -> frozenset[str]:
        """``WS_ALLOWED_ORIGINS`` as a set (empty: any origin)."""
        return frozenset(
            origin.strip().rstrip("/")
            for origin in self.ws_allowed_origins.split(",")
            if origin.strip() and origin.strip() != "*"
        )

    @field_validator("admin_key_ids")
    @classmethod
    def _key_ids(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                UUID(part.strip())  # ValueError names it
        return value

    @property
    def admin_keys(self) -> frozenset[UUID]:
        """``ADMIN_KEY_IDS`` as key ids."""
        return frozenset(
            UUID(part.strip()) for part in self.admin_key_ids.split(",") if part.strip()
        )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names it
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``TRUSTED_PROXIES`` as networks."""
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in self.trusted_proxies.split(",")
            if part.strip()
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def webhook_hosts(self) -> frozenset[str] | None:
        """``WEBHOOK_ALLOWED_HOSTS`` as lower-case names (None: any public host)."""
        hosts = frozenset(
            part.strip().strip("[]").rstrip(".").lower()
            for part in self.webhook_allowed_hosts.split(",")
            if part.strip()
        )
        return hosts or None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cors_origins(self) -> frozenset[str]:
        """``CORS_ALLOW_ORIGINS`` as a set (empty: CORS off)."""
        return frozenset(
            origin.strip().rstrip("/")
            for origin in self.cors_allow_origins.split(",")
            if origin.strip()
        )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rate_limit_backend(self) -> str:
        """Where budgets are counted: ``off``, ``redis`` (REDIS_URL set) or ``memory``."""
        if not self.rate_limits:
            return "off"
        return "redis" if self.redis_url else "memory"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def hot_backend(self) -> str:
        """Where the hot projection lives: ``redis`` when ``REDIS_URL`` is set, else ``memory``."""
        return "redis" if self.redis_url else "memory"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def fanout_backend(self) -> str:
        """What carries the log between processes (and the notification work queue):
        ``rabbitmq`` when ``AMQP_URL`` is set, else ``memory`` (in-process)."""
        return "rabbitmq" if self.amqp_url else "memory"
