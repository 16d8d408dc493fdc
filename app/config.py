"""Settings from the environment (and an optional ``.env``), validated once per process.

Nothing here opens a connection: ``get_settings()`` is called by composition roots (the CLI,
worker start-up, Alembic's env, test fixtures).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.lifecycle import GATE_BY_NAME, STAGE_BY_ACTIVE, STAGE_BY_NAME, TaskStatus

#: What ``DATABASE_URL`` may name: PostgreSQL (libpq's plain scheme is taken for asyncpg) or a
#: SQLite file for the service layer alone.
DATABASE_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg",
                              "postgresql+psycopg2", "sqlite+aiosqlite"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


class Settings(BaseSettings):
    """Every knob of the pipeline; names match the environment variables in DESIGN.md §4."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str | None = None
    redis_url: str | None = None

    db_pool_size: int = Field(10, ge=1)
    db_max_overflow: int = Field(10, ge=0)
    db_pool_recycle_s: int = Field(1800, ge=-1, alias="DB_POOL_RECYCLE_SECONDS")
    db_pool_timeout_s: float = Field(30.0, gt=0, alias="DB_POOL_TIMEOUT_SECONDS")
    db_statement_cache_size: int = Field(100, ge=0)
    db_pgbouncer: bool = False
    #: Test each pooled connection with a round trip before use. Off by default: every
    #: transaction would pay a round trip, and a connection lost to a restart fails its first
    #: statement instead, which workers retry (the pool then reconnects).
    db_pool_pre_ping: bool = False

    notion_token: str | None = Field(None, repr=False)
    notion_data_source_id: str | None = None
    notion_base_url: str | None = None
    notion_prop_title: str = "Title"
    notion_prop_topic: str = "Topic"
    notion_prop_story_direction: str = "Story Direction"
    notion_prop_channel: str = "Channel"
    notion_prop_priority: str = "Priority"
    notion_prop_status: str = "Status"
    notion_prop_error: str = "Error"
    notion_prop_youtube_url: str = "YouTube URL"
    #: A text property showing an operator's hold (empty: holds are not pushed).
    notion_prop_hold: str = ""
    notion_sync_interval_s: float = Field(30.0, gt=0, alias="NOTION_SYNC_INTERVAL_SECONDS")
    notion_sync_overlap_s: float = Field(120.0, ge=0, alias="NOTION_SYNC_OVERLAP_SECONDS")
    notion_sync_in_worker: bool = False
    notion_rate_per_s: float = Field(3.0, gt=0, alias="NOTION_RATE_PER_SECOND")
    notion_timeout_s: float = Field(30.0, gt=0, alias="NOTION_TIMEOUT_SECONDS")
    notion_push_batch: int = Field(25, ge=1)
    notion_push_limit: int = Field(500, ge=1)

    stage_handlers: str = "simulated"
    auto_approve_gates: str = ""
    lease_s: float = Field(30.0, gt=0, alias="LEASE_SECONDS")
    #: Per-stage lease overrides, ``stage=seconds`` comma list (e.g. ``upload=300,video=120``).
    stage_lease_seconds: str = ""
    sweep_interval_s: float = Field(5.0, gt=0, alias="SWEEP_INTERVAL_SECONDS")
    stage_max_attempts: int = Field(3, ge=1)
    retry_backoff_s: float = Field(5.0, ge=0, alias="RETRY_BACKOFF_SECONDS")
    simulated_stage_s: float = Field(0.2, ge=0, alias="SIMULATED_STAGE_SECONDS")
    #: ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``; unset: INFO for workers and the sync,
    #: WARNING for admin commands.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = None
    log_format: Literal["text", "json"] = "text"
    worker_concurrency: int = Field(10, ge=1)
    #: How often a worker renews its record in the registry (``pipeline workers``); a worker
    #: silent for three of these drops out.
    worker_heartbeat_s: float = Field(5.0, gt=0, alias="WORKER_HEARTBEAT_SECONDS")
    queue_name: str = "pipeline:queue"
    shutdown_grace_s: int = Field(25, ge=0, alias="SHUTDOWN_GRACE_SECONDS")
    job_timeout_s: int = Field(6 * 3600, ge=1, alias="JOB_TIMEOUT_SECONDS")

    #: Bearer token for the HTTP API's writes (and its reads unless ``API_PUBLIC_READ``);
    #: without it ``pipeline serve`` binds loopback only.
    api_token: str | None = Field(None, repr=False)
    api_public_read: bool = False
    #: A worker's own Prometheus endpoint (off when unset).
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            scheme = make_url(value).drivername
        except ArgumentError:
            raise ValueError("not a database URL (postgresql+asyncpg://user@host/db or"
                             " sqlite+aiosqlite:///path)") from None
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(f"unsupported scheme {scheme!r}; use one of "
                             f"{', '.join(sorted(DATABASE_SCHEMES))}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in REDIS_SCHEMES:
            raise ValueError("not a Redis URL (redis://host:6379/0, rediss://… or"
                             " unix:///path/to/socket)")
        return value

    @field_validator("auto_approve_gates")
    @classmethod
    def _known_gates(cls, value: str) -> str:
        names = {part.strip() for part in value.split(",") if part.strip()}
        unknown = names - set(GATE_BY_NAME) - {"all"}
        if unknown:
            known = ", ".join([*GATE_BY_NAME, "all"])
            raise ValueError(f"unknown gate(s) {', '.join(sorted(unknown))}; known: {known}")
        return value

    @field_validator("stage_lease_seconds")
    @classmethod
    def _stage_leases(cls, value: str) -> str:
        _parse_stage_leases(value)
        return value

    def lease_for(self, status: TaskStatus) -> float:
        """The lease of a task in ``status``: its stage's override, else ``LEASE_SECONDS``."""
        stage = STAGE_BY_ACTIVE.get(status)
        overrides = _parse_stage_leases(self.stage_lease_seconds)
        return overrides.get(stage.name, self.lease_s) if stage else self.lease_s

    @property
    def auto_approved(self) -> frozenset[str]:
        """Gate names passed without a human."""
        names = {part.strip() for part in self.auto_approve_gates.split(",") if part.strip()}
        return frozenset(GATE_BY_NAME) if "all" in names else frozenset(names)


@lru_cache(maxsize=16)
def _parse_stage_leases(value: str) -> dict[str, float]:
    leases: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, seconds = part.partition("=")
        name = name.strip()
        if not sep or name not in STAGE_BY_NAME:
            raise ValueError(f"{part!r}: expected stage=seconds with a stage among "
                             f"{', '.join(STAGE_BY_NAME)}")
        try:
            leases[name] = float(seconds)
        except ValueError:
            raise ValueError(f"{part!r}: {seconds.strip()!r} is not a number of seconds") from None
        if leases[name] <= 0:
            raise ValueError(f"{part!r}: a lease must be longer than 0 seconds")
    return leases


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use."""
    return Settings()
