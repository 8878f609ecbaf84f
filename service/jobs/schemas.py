from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from service.catalog import MODELS

# No NUL: Postgres text cannot hold it.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00]*$")]
MetadataValue = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\x00]*$")]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]

# What `params` holds, for the OpenAPI document (issues 14 and 16): the fields every request uses, so clients and
# schema-driven tools (schemathesis) can write a valid request. The service checks params itself
# (service.jobs.validation); any other field of the Messages or Chat Completions body passes through to MiniMax.
_CONTENT_BLOCK: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "examples": ["text", "image", "image_url", "video", "video_url"]}},
    "additionalProperties": True,
}
PARAMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["messages"],
    "properties": {
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["user", "assistant", "system"]},
                    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _CONTENT_BLOCK}]},
                },
            },
        },
        "max_tokens": {"type": "integer", "minimum": 1, "description": "At most the model's output limit."},
        "system": {"type": "string", "description": "The system prompt (anthropic format)."},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "additionalProperties": True,
    "examples": [
        {"max_tokens": 1024, "messages": [{"role": "user", "content": "Summarize this contract: ..."}]},
        {
            "max_tokens": 512,
            "system": "You answer in one paragraph.",
            "temperature": 0.2,
            "messages": [{"role": "user", "content": "What changed between these two versions? ..."}],
        },
    ],
}
# A URL we call back; `format: uri` tells schema-driven clients to write one (the guard checks it: netguard).
WebhookURL = Annotated[str, Field(max_length=2048, json_schema_extra={"format": "uri"})]
MODEL_SCHEMA: dict[str, Any] = {"enum": list(MODELS), "examples": ["MiniMax-M2.7"]}


class JobCreate(BaseModel):
    model: str = Field(description="A MiniMax model, e.g. MiniMax-M3 or MiniMax-M2.7.", json_schema_extra=MODEL_SCHEMA)
    format: Literal["anthropic", "openai"] = Field(
        "anthropic", description="Which MiniMax-compatible API the params are written for."
    )
    params: dict[str, Any] = Field(
        description="The Messages body (anthropic) or Chat Completions body (openai), without model and stream.",
        json_schema_extra=PARAMS_SCHEMA,
    )
    metadata: Metadata = Field(
        default_factory=dict,
        description="Up to 16 string pairs, filterable when listing.",
        examples=[{"customer": "acme", "doc": "contract-17"}],
    )
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first within a tenant.")
    max_attempts: int | None = Field(None, ge=1, le=20, description="Calls to try before failing (default 5).")
    webhook_url: WebhookURL | None = Field(
        None, description="Called (signed) when the job finishes.", examples=["https://example.com/hooks/minimax"]
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "model": "MiniMax-M2.7",
                    "params": {"max_tokens": 1024, "messages": [{"role": "user", "content": "Summarize: ..."}]},
                    "metadata": {"customer": "acme"},
                }
            ]
        },
    )


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
    account: str | None = Field(
        None,
        description="The upstream account the call went to: `own_key` for your own MiniMax key, else the name of "
        "the operator's account; null for the service's single configured key (and attempts still running).",
    )
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
        "starting soon) | tenant_disabled (the operator disabled the tenant: nothing of it is dispatched) | "
        "budget | tenant_key (your own MiniMax key cannot be used right now: `limit` says why, `detail` explains)"
    )
    limit: str | None = Field(
        None,
        description="Which limit: rpm, tpm, tenant_rpm, tenant_tpm, tenant_concurrency; for tenant_key: "
        "undecryptable, or minimax_<code> (1004, 2049, 1008: MiniMax refused your own key).",
    )
    until: datetime | None = Field(None, description="When it can go next, as far as the scheduler knows.")
    detail: str | None = Field(None, description="What to do about it, when there is something to do.")


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
        None,
        description="MiniMax's own count (count_tokens), asked before the call when the estimate is near the "
        "model's window (MiniMax-M3, Anthropic format).",
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
