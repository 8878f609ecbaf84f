"""All settings in one class. Nothing else in the code base reads the environment."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from service.pricing import PriceTable

SIMULATOR_API_KEY = "sk-simulator"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/mmjobs"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# What `mmjobs up` writes under data_dir: the URLs it runs on, so every other command finds the same data.
LOCAL_UP_FILE = "up.json"
DEV_KEY_FILE = "dev-api-key"
_PRICE_TABLES: dict[str, PriceTable] = {}


class ModelRateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, gt=0, le=10**12)
    tpm: int | None = Field(None, gt=0, le=10**12)


class UpstreamAccount(BaseModel):
    """One MiniMax account of MMJOBS_UPSTREAM_ACCOUNTS (service/accounts/): its own key, host and limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    api_key: str = Field(min_length=1, repr=False)
    base_url: str = "https://api.minimax.io"
    # Share of the jobs this account gets while every account has headroom (a full account passes its turn on).
    weight: float = Field(1.0, gt=0, le=1000)
    rate_limits: dict[str, ModelRateLimit] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _root(cls, value: str) -> str:
        from service.minimax_url import normalize_base_url

        return normalize_base_url(value)

    @field_validator("rate_limits")
    @classmethod
    def _models(cls, value: dict[str, ModelRateLimit]) -> dict[str, ModelRateLimit]:
        return _known_models(value)

    def model_limits(self) -> dict[str, tuple[int, int]]:
        from service.catalog import configured_limits

        return configured_limits({m: (v.rpm, v.tpm) for m, v in self.rate_limits.items()})


def _known_models(value: dict[str, ModelRateLimit]) -> dict[str, ModelRateLimit]:
    from service.catalog import MODELS

    unknown = sorted(set(value) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; known models: {', '.join(MODELS)}")
    return value


def _accounts_source(value: Any) -> Any:
    """MMJOBS_UPSTREAM_ACCOUNTS: a JSON list, or the path of a file holding one (keys stay out of the environment)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if not text.startswith("["):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"not a JSON list and not a readable file: {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMJOBS_", env_file=".env", extra="ignore")

    # Unset: the URLs a local `mmjobs up` recorded in <data_dir>/up.json, else these defaults (see _local_up).
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL

    # The ecosystem's own variable names, without our prefix.
    minimax_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("MINIMAX_API_KEY", "MMJOBS_MINIMAX_API_KEY")
    )
    minimax_base_url: str = Field(
        default="https://api.minimax.io",
        validation_alias=AliasChoices("MINIMAX_BASE_URL", "MMJOBS_MINIMAX_BASE_URL"),
    )

    # Intake
    max_body_bytes: int = 64 * 1024 * 1024
    # API threads for sync routes, and the most requests one API process serves at once (the rest get 503 with
    # Retry-After; idle keep-alive connections do not count): the gap keeps threads free for requests that
    # already hold a database connection.
    api_threads: int = 512
    api_max_concurrency: int = 400
    # The URL clients reach this API at (scheme, host, any path prefix), for links in responses (`links.self`,
    # `results_url`). Unset: links are paths (the Anthropic drop-in's results_url: the listening address). Never
    # taken from the request's Host header, which the client chooses (service/api/links.py).
    public_base_url: str | None = None
    # Batch and file uploads (JSONL, documents) may be larger than a single request.
    max_upload_bytes: int = 256 * 1024 * 1024
    # At most this many bodies larger than large_body_bytes are read by one API process at once; the next gets
    # 503 with Retry-After (service/api/large_bodies.py).
    max_concurrent_large_bodies: int = Field(4, ge=1)
    large_body_bytes: int = Field(4 * 1024 * 1024, ge=0)
    # Where uploaded files (the OpenAI drop-in's batch input) are kept; unset: `<data_dir>/files`. Every API
    # process must see the same directory.
    files_dir: str | None = None
    # Intake limits per tenant (issue 14; service/limits/), each overridable per tenant with `mmjobs tenants limits`.
    # Requests per minute, per tenant and per API key (0: no limit), enforced in Redis (GCRA); a burst of
    # `request_burst_seconds` worth of requests is allowed at once. Health, readiness and metrics are never limited.
    requests_per_minute: int = Field(2400, ge=0)
    key_requests_per_minute: int = Field(1200, ge=0)
    request_burst_seconds: float = Field(10.0, gt=0, le=3600)
    # Most jobs waiting to run (queued or retrying, batch requests included), batches not yet ended, schedules,
    # and bytes of stored files (POST /v1/files and the OpenAI drop-in's files) per tenant; 0: no limit.
    max_queued_jobs: int = Field(1_000_000, ge=0)
    max_active_batches: int = Field(100, ge=0)
    max_schedules: int = Field(1000, ge=0)
    max_stored_file_bytes: int = Field(50 * 1024**3, ge=0)
    # Media (issue 6): where uploaded files live, `dir` (files_dir, shared by every API and worker process)
    # or `s3` (any S3-compatible object store, for several hosts); the largest file POST /v1/files takes; how long
    # a MiniMax file id is reused (MiniMax keeps files 7 days; the margin covers jobs that wait and retry).
    storage: Literal["dir", "s3"] = "dir"
    s3_bucket: str | None = None
    s3_endpoint_url: str = "https://s3.amazonaws.com"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_prefix: str = "files/"
    max_file_bytes: int = 512 * 1024 * 1024
    minimax_file_reuse_seconds: float = Field(6 * 24 * 3600, gt=0, le=7 * 24 * 3600)
    # Ask count_tokens before calling a model that offers it when the estimate is within this share of the window.
    preflight_margin: float = Field(0.10, ge=0, le=1)
    default_max_attempts: int = 5
    job_expiry_seconds: int = 24 * 3600
    page_size_max: int = 200

    # Rate limits: per model overrides of MiniMax's published limits, as JSON,
    # e.g. {"MiniMax-M2.7": {"rpm": 600, "tpm": 20000000}}.
    rate_limits: dict[str, ModelRateLimit] = Field(default_factory=dict)
    # Limiter keys are per upstream account: give each MiniMax account its own name.
    upstream_account: str = "default"
    # Several MiniMax accounts (README "Upstream accounts"): a JSON list, or a file path, of
    # {"name", "api_key", "base_url", "weight", "rate_limits"}. Unset: the one account of MINIMAX_API_KEY /
    # MINIMAX_BASE_URL / MMJOBS_RATE_LIMITS named `upstream_account`. An account answering 1004, 2049 or 1008 leaves
    # the rotation and is probed every `account_probe_seconds` until it answers again.
    upstream_accounts: Annotated[list[UpstreamAccount], NoDecode, BeforeValidator(_accounts_source)] = Field(
        default_factory=list
    )
    account_probe_seconds: float = Field(30.0, gt=0)
    # Encrypts tenants' own MiniMax keys at rest (Fernet): a Fernet key (`mmjobs tenants key generate-secret`),
    # or a file holding one. Unset: tenants' own keys cannot be stored (and stored ones cannot be used).
    secret_key: str | None = Field(default=None, repr=False)
    # Share of max_tokens reserved against TPM before a call (settled to the real usage after).
    output_reserve_share: float = Field(0.5, ge=0, le=1)
    # The limiter's window, a second longer than MiniMax's minute: a call admitted here reaches MiniMax a little
    # later, and a varying delay must never let MiniMax's window see one call more than ours did.
    limiter_window_seconds: float = Field(61.0, ge=60)
    default_output_reserve: int = 1024

    # Price overrides, USD per million tokens, per model: {"MiniMax-M2.7": {"input": 0.3, "output": 1.2}}
    # (also cache_read, cache_write, and long_* for MiniMax-M3 above 512k input tokens).
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)

    # Worker
    # Upstream calls in flight per worker process: one thread each (workers/runtime.py Calls).
    worker_concurrency: int = Field(200, ge=1)
    # Celery threads per worker process that receive messages, claim their jobs and start their calls: a few are
    # enough, each message naming up to `jobs_per_message` jobs.
    worker_receivers: int = Field(4, ge=1)
    lease_seconds: float = 60.0
    # SIGTERM on a worker: calls in flight may finish for this long; whatever is still running then is handed
    # back to the queue at once (not after its lease runs out) and the process exits. Keep it below the
    # orchestrator's kill timeout (compose: stop_grace_period 60s; Kubernetes: terminationGracePeriodSeconds).
    worker_shutdown_grace_seconds: float = Field(25.0, ge=0)
    lease_refresh_seconds: float = 10.0
    # How often a worker writes its calls' output tokens so far (GET /v1/jobs/ID `progress`, the CLI's live view).
    progress_refresh_seconds: float = Field(1.0, gt=0)
    # The longest one upstream call may run, however lively its stream (pings do not count as progress): the
    # call is stopped, billed for what it used, and its job fails. A job's `expires_at` stops it too, if sooner.
    max_call_seconds: float = Field(3600.0, gt=0)
    stream: bool = True
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    # Connections to MiniMax per worker process, split over pools of at most 32 (workers/runtime.py UpstreamClients).
    upstream_max_connections: int = Field(1000, ge=1)
    # Many calls in flight per worker process (issue 17.3; benchmarks/inflight.py): each call is a thread, so
    # its stack is reserved address space (glibc's default is 8 MiB, of which a call touches a few dozen KiB);
    # 0 keeps the system default. The threads share one bounded Redis pool (they wait for a free connection).
    worker_thread_stack_kib: int = Field(1024, ge=0)
    worker_redis_max_connections: int = Field(64, ge=4)
    # How many of a process's call threads may run at once outside their upstream wait (claiming, recording,
    # parsing an answer); the others sleep until a slot frees (workers/stopping.py Gate).
    worker_active_threads: int = Field(16, ge=1)

    # Webhooks: let deliveries reach loopback addresses (local development and tests only, never production).
    webhook_allow_loopback: bool = False
    webhook_timeout_seconds: float = 15.0

    # Scheduler
    scheduler_interval: float = 0.5
    redispatch_after_seconds: float = 30.0
    # Most jobs published but not yet claimed: keeps the broker queue short (DESIGN.md decision 4), so a job
    # submitted behind a 100,000-request batch is never more than this many messages from a worker. Also the
    # most a pass can start: workers claim a message in 1-2 s under load, so ~this many jobs start per 1-2 s.
    max_unclaimed: int = 300
    # Jobs one Celery message names at most (workers/scheduler.py): one message, one claim statement for all of
    # them, instead of one each (issue 17.1). 1 publishes a message per job.
    jobs_per_message: int = Field(16, ge=1, le=500)
    # Outcomes a worker process records in one transaction at most (workers/finisher.py): billed successes of batch
    # jobs without budgets, when they end faster than one transaction takes. 1 records each alone.
    finish_group_max: int = Field(32, ge=1, le=500)
    retry_base_seconds: float = 1.0
    retry_cap_seconds: float = 300.0

    # Schedules: directories on this server whose files a schedule may submit as documents (a JSON list of absolute
    # paths, e.g. ["/srv/reports"]); empty: no document sources.
    schedule_source_dirs: list[str] = Field(default_factory=list)
    # Idempotency-Key: how long an in-flight request holds its key without renewal (renewed while it runs), so
    # a key left by a crashed API process can be used again.
    idempotency_lock_seconds: float = Field(60.0, gt=0)

    # Database pools, per process (Postgres allows 100 connections by default: API + N workers + scheduler).
    # Connections open on demand and stay open: overflow connections would be closed after every burst of
    # claims, and a new Postgres backend per burst cost the worker host more CPU than the calls themselves.
    db_pool_size: int = 15
    db_max_overflow: int = 0

    # `mmjobs up` (issue 16): where the embedded Postgres and Valkey keep their data, the processes their logs, and
    # up.json / dev-api-key the URLs and key every other command then finds by itself.
    data_dir: str = ".mmjobs"
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    simulator_port: int = Field(8765, ge=1, le=65535)
    # A process `up` starts is waited on as long as it lives and progresses (output or CPU time); this long
    # without either, it is reported stuck.
    startup_stall_seconds: float = Field(120.0, gt=0)
    # Where nothing answers at the default Postgres / Redis address and none is configured: start the servers the
    # `embedded` extra brings (`auto`), or stop with what to do (`never`).
    embedded_servers: Literal["auto", "never"] = "auto"
    # The CLI's client commands (`mmjobs job|batch|schedules|video|limits|webhooks`): unset, the API and the
    # development key of the local `mmjobs up` (up.json, dev-api-key), else http://127.0.0.1:8000.
    api_url: str | None = None
    api_key: str | None = None

    # Logging
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Observability (service/observability/): one JSON object per log line, or human-readable lines.
    log_format: Literal["json", "console"] = "json"
    # `GET /metrics` is open unless a token is set (then `Authorization: Bearer TOKEN`); firewall it either way.
    metrics_token: str | None = None
    # How long the API reuses the figures it read from Postgres and Redis for `/metrics`.
    metrics_cache_seconds: float = Field(5.0, ge=0)
    # Serve this worker process's own metrics (calls in flight, upstream latency) on this port; 0: off.
    worker_metrics_port: int = Field(0, ge=0, le=65535)
    # Tracing (the `otel` extra, service/observability/tracing.py): spans from intake to the upstream call, sent over
    # OTLP to the SDK's own OTEL_EXPORTER_OTLP_ENDPOINT (default localhost:4318 for http/protobuf, :4317 for grpc).
    otel_enabled: bool = False
    otel_service_name: str = "mmjobs"
    # A plain string: a value meant for another program (http/json) must not stop this one from starting; anything
    # but grpc means http/protobuf.
    otel_exporter_otlp_protocol: str = Field(
        default="http/protobuf",
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_PROTOCOL", "MMJOBS_OTEL_EXPORTER_OTLP_PROTOCOL"),
    )

    @field_validator("minimax_base_url")
    @classmethod
    def _base_url_root(cls, value: str) -> str:
        from service.minimax_url import normalize_base_url

        return normalize_base_url(value)  # `.../v1`, `.../anthropic`, a trailing slash: all the same root

    @field_validator("rate_limits")
    @classmethod
    def _known_models(cls, value: dict[str, ModelRateLimit]) -> dict[str, ModelRateLimit]:
        return _known_models(value)

    @field_validator("upstream_accounts")
    @classmethod
    def _distinct_accounts(cls, value: list[UpstreamAccount]) -> list[UpstreamAccount]:
        names = [a.name for a in value]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ValueError(f"account name {duplicate!r} is given twice; each account needs its own name")
        return value

    def accounts(self) -> list[UpstreamAccount]:
        """The upstream accounts jobs run on: MMJOBS_UPSTREAM_ACCOUNTS, else the single configured one."""
        if self.upstream_accounts:
            return list(self.upstream_accounts)
        return [
            UpstreamAccount.model_construct(
                name=self.upstream_account,
                api_key=self.minimax_api_key or "",
                base_url=self.minimax_base_url,
                weight=1.0,
                rate_limits=self.rate_limits,
            )
        ]

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("give an http(s) URL with a host and no query, e.g. https://jobs.example.com")
        return value.rstrip("/")

    @field_validator("prices")
    @classmethod
    def _valid_prices(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        from service.pricing import PriceTable

        PriceTable(value)  # raises ValueError naming the model or field
        return value

    def price_table(self) -> PriceTable:
        from service.pricing import PriceTable

        key = json.dumps(self.prices, sort_keys=True)
        table = _PRICE_TABLES.get(key)
        if table is None:
            table = _PRICE_TABLES[key] = PriceTable(self.prices)
        return table

    def model_limits(self) -> dict[str, tuple[int, int]]:
        """(rpm, tpm) per model, MiniMax's published defaults with MMJOBS_RATE_LIMITS laid over them."""
        from service.catalog import configured_limits

        return configured_limits({m: (v.rpm, v.tpm) for m, v in self.rate_limits.items()})

    # Fields filled from a local `mmjobs up`'s up.json rather than configured (`up` itself ignores those).
    _from_local_up: set[str] = PrivateAttr(default_factory=set)

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str) -> str:
        # One SQL dialect (DESIGN.md decision 9): `mmjobs up` brings a real Postgres where none is installed.
        if not value.startswith(("postgresql:", "postgresql+psycopg:", "postgres:")):
            raise ValueError(f"{value.split(':', 1)[0]!r} is not supported: give a postgresql+psycopg:// URL")
        if value.startswith(("postgresql:", "postgres:")):
            value = "postgresql+psycopg:" + value.split(":", 1)[1]
        return value

    @model_validator(mode="after")
    def _local_up(self) -> Settings:
        """Nothing configured: the database and Redis that a local `mmjobs up` uses (it writes them to up.json), so
        `mmjobs keys create`, `keys list`, `usage`... read the same data as the service it started."""
        state = self.local_up()
        if state is None:
            return self
        for field in ("database_url", "redis_url"):
            if field not in self.model_fields_set and isinstance(state.get(field), str):
                setattr(self, field, state[field])
                self._from_local_up.add(field)
        return self

    def local_up(self) -> dict[str, Any] | None:
        """What the last `mmjobs up` in data_dir recorded (URLs, pid), or None."""
        try:
            state = json.loads((Path(self.data_dir) / LOCAL_UP_FILE).read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    def configured(self, field: str) -> bool:
        """Whether a field was given (environment, .env, argument), not a default nor a local `up`'s."""
        return field in self.model_fields_set and field not in self._from_local_up

    def dev_api_key(self) -> str | None:
        """The development key a local `mmjobs up` saved, if any."""
        try:
            return (Path(self.data_dir) / DEV_KEY_FILE).read_text().strip() or None
        except OSError:
            return None


@lru_cache
def get_settings() -> Settings:
    return Settings()
