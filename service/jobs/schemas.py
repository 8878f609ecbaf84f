from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# No NUL: Postgres text cannot hold it.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
MetadataValue = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\x00]*$")]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="A MiniMax model, e.g. MiniMax-M3 or MiniMax-M2.7.")
    format: Literal["anthropic", "openai"] = Field(
        "anthropic", description="Which MiniMax-compatible API the params are written for."
    )
    params: dict[str, Any] = Field(
        description="The Messages body (anthropic) or Chat Completions body (openai), without model and stream."
    )
    metadata: Metadata = Field(default_factory=dict, description="Up to 16 string pairs, filterable when listing.")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first within a tenant.")
    max_attempts: int | None = Field(None, ge=1, le=20, description="Calls to try before failing (default 5).")
    webhook_url: str | None = Field(None, max_length=2048, description="Called (signed) when the job finishes.")


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


class UsageCost(Usage):
    cost_usd: Decimal = Field(description="Billed so far, every attempt included, at the prices in force then.")


class CostRange(BaseModel):
    min: Decimal = Field(description="The input alone.")
    max: Decimal = Field(description="The input plus every output token max_tokens allows.")


class Estimate(BaseModel):
    object: Literal["estimate"] = "estimate"
    model: str
    requests: int = 1
    estimated_input_tokens: int
    max_output_tokens: int
    cost_usd: CostRange
    price_version: str


class Attempt(BaseModel):
    number: int
    started_at: datetime
    ended_at: datetime | None
    duration_ms: int | None
    http_status: int | None
    minimax_code: int | None
    classification: str | None
    error_type: str | None
    error_message: str | None
    upstream_request_id: str | None
    usage: Usage


class Result(BaseModel):
    content: list[dict[str, Any]] = Field(description="Content blocks; thinking blocks whole, with signatures.")
    text: str
    stop_reason: str | None
    usage: Usage
    upstream_request_id: str | None
    raw: dict[str, Any] = Field(description="The provider's response as MiniMax sent it (assembled if streamed).")


class JobError(BaseModel):
    type: str
    message: str
    classification: str | None = None
    http_status: int | None = None
    minimax_code: int | None = None
    retry: str | None = Field(None, description="Whether and when it is retried, or why not.")


class Progress(BaseModel):
    output_tokens_so_far: int


class Waiting(BaseModel):
    reason: str = Field(
        description="retry_backoff | rate_limit | tenant_cap | worker_capacity | dispatched (handed to a worker, "
        "starting soon) | tenant_disabled (the operator disabled the tenant: nothing of it is dispatched)"
    )
    limit: str | None = Field(None, description="Which limit: rpm, tpm, tenant_rpm, tenant_tpm, tenant_concurrency.")
    until: datetime | None = Field(None, description="When it can go next, as far as the scheduler knows.")


class Links(BaseModel):
    self: str
    cancel: str


class JobSummary(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: str
    model: str
    format: str
    batch_id: str | None = Field(None, description="The batch this request belongs to, if any.")
    custom_id: str | None = None
    priority: int
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime
    attempt_count: int
    max_attempts: int
    estimated_input_tokens: int
    counted_input_tokens: int | None = Field(
        None, description="MiniMax's own count (count_tokens), asked before the call when the estimate is near the "
        "model's window (MiniMax-M3, Anthropic format)."
    )
    usage: UsageCost
    error: JobError | None
    links: Links


class JobDetail(JobSummary):
    waiting: Waiting | None = Field(description="Why a queued or retrying job has not started yet.")
    progress: Progress
    attempts: list[Attempt]
    result: Result | None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobSummary]
    has_more: bool
    next_cursor: str | None = Field(description="Pass as `cursor` to get the next page; null on the last page.")
