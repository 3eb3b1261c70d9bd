"""Configuration from environment variables (pydantic-settings). No I/O here."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, computed_field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything selectable without code edits. Unset URLs mean embedded adapters:
    SQLite files under ``DATA_DIR`` and in-process projections and fan-out."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default=Path("var"), alias="DATA_DIR")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    amqp_url: str | None = Field(default=None, alias="AMQP_URL")
    redis_prefix: str = Field(default="dr:", alias="REDIS_PREFIX")
    amqp_exchange: str = Field(default="defi-realtime.events", alias="AMQP_EXCHANGE")
    # eventsourcing's stock PostgreSQL recorder instead of our batched one (for comparison).
    stock_postgres_recorder: bool = Field(default=False, alias="STOCK_POSTGRES_RECORDER")

    host: str = Field(default="127.0.0.1", alias="HOST")
    port: int = Field(default=8000, alias="PORT")
    require_key_for_reads: bool = Field(default=False, alias="REQUIRE_KEY_FOR_READS")
    max_body_bytes: int = Field(default=5 * 1024 * 1024, alias="MAX_BODY_BYTES")
    # Seconds a client has to send a whole request head (request line and headers, also of
    # a WebSocket handshake) from connecting or from the end of its previous response.
    http_header_timeout: float = Field(default=10.0, gt=0, alias="HTTP_HEADER_TIMEOUT")
    ws_queue_size: int = Field(default=1_000, alias="WS_QUEUE_SIZE")
    ws_idle_timeout: float = Field(default=120.0, alias="WS_IDLE_TIMEOUT")
    # Seconds a client whose queue is full may go without reading before it is closed
    # (4008); one that keeps reading is never closed for being behind (docs/websocket.md).
    ws_send_timeout: float = Field(default=10.0, gt=0, alias="WS_SEND_TIMEOUT")
    # WebSocket transport: "lean" (our asyncio protocol under uvicorn, ~10 KB a socket) or
    # "asgi" (Starlette's WebSocket over uvicorn's websockets implementation).
    ws_transport: str = Field(default="lean", alias="WS_TRANSPORT")
    ws_heartbeat_interval: float = Field(default=20.0, alias="WS_HEARTBEAT_INTERVAL")
    # Comma-separated Origin values allowed on the handshake; empty allows any (requests
    # without an Origin header, i.e. not from a browser, are always allowed).
    ws_allowed_origins: str = Field(default="", alias="WS_ALLOWED_ORIGINS")
    # Kernel send buffer of each socket (lean transport; 0 keeps the OS default): bounds the
    # kernel memory a client that stops reading can pin.
    ws_send_buffer: int = Field(default=256 * 1024, alias="WS_SEND_BUFFER")
    ws_max_message: int = Field(default=1024 * 1024, alias="WS_MAX_MESSAGE")
    poll_interval: float = Field(default=0.5, alias="POLL_INTERVAL")
    # The cyclic garbage collector's thresholds "gen0,gen1,gen2", set while a node runs
    # (ADR 0012). With Python's 700,10,10 a loaded node ran a full collection every ~25 s;
    # with 10,000 sockets open one scans ~370k objects and stalls every update ~220 ms.
    gc_thresholds: str = Field(default="700,10,1000", alias="GC_THRESHOLDS")
    node_id: str | None = Field(default=None, alias="NODE_ID")

    # Alert delivery (see application/notifications.py).
    amqp_notifications: str = Field(
        default="defi-realtime.notifications", alias="AMQP_NOTIFICATIONS"
    )
    allow_private_webhooks: bool = Field(default=False, alias="ALLOW_PRIVATE_WEBHOOKS")
    webhook_timeout: float = Field(default=10.0, alias="WEBHOOK_TIMEOUT")
    smtp_host: str | None = Field(default=None, alias="SMTP_HOST")
    smtp_port: int = Field(default=25, alias="SMTP_PORT")
    smtp_from: str = Field(default="alerts@defi-realtime.invalid", alias="SMTP_FROM")
    smtp_starttls: bool = Field(default=False, alias="SMTP_STARTTLS")
    smtp_username: str | None = Field(default=None, alias="SMTP_USERNAME")
    smtp_password: str | None = Field(default=None, alias="SMTP_PASSWORD")
    notify_max_attempts: int = Field(default=8, ge=1, le=50, alias="NOTIFY_MAX_ATTEMPTS")
    notify_backoff_base: float = Field(default=1.0, ge=0, alias="NOTIFY_BACKOFF_BASE")
    notify_backoff_max: float = Field(default=3_600.0, ge=0, alias="NOTIFY_BACKOFF_MAX")
    notify_jitter: float = Field(default=0.2, ge=0, le=1, alias="NOTIFY_JITTER")
    notify_concurrency: int = Field(default=16, ge=1, alias="NOTIFY_CONCURRENCY")

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
            "POSTGRES_POOL_SIZE": "5",
            "POSTGRES_MAX_OVERFLOW": "5",
        }
        return env

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
