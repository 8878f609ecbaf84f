from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.jobs.schemas import MODEL_SCHEMA, PARAMS_SCHEMA, Metadata, UsageCost, WebhookURL

CUSTOM_ID_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_REQUESTS = 100_000
MAX_WINDOW_SECONDS = 7 * 24 * 3600


class BatchRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: str = Field(pattern=CUSTOM_ID_PATTERN, description="Unique in the batch; names the result line.")
    model: str = Field(json_schema_extra=MODEL_SCHEMA)
    format: Literal["anthropic", "openai"] = "anthropic"
    params: dict[str, Any] = Field(json_schema_extra=PARAMS_SCHEMA)


# Each request of a JSON batch, as the OpenAPI document shows it: lines are validated one by one by the service
# (naming the line at fault), so the model takes them as `Any`.
REQUEST_SCHEMA = BatchRequestIn.model_json_schema()


class BatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: Metadata = Field(default_factory=dict)
    webhook_url: WebhookURL | None = None
    completion_window: str = Field(
        "24h", pattern=r"^[1-9][0-9]*[hm]$", description="How long requests may wait before they expire: 24h, 90m."
    )
    reasoning_split: bool | None = Field(
        None,
        description="MiniMax's reasoning_split for every openai-format request that does not set its own: true keeps "
        "the reasoning out of `content` (in `reasoning_content` / `reasoning_details`).",
    )

    @field_validator("completion_window")
    @classmethod
    def _at_most_a_week(cls, value: str) -> str:
        n, unit = int(value[:-1]), value[-1]
        if n * (3600 if unit == "h" else 60) > MAX_WINDOW_SECONDS:
            raise ValueError("at most 168h (7 days)")
        return value

    def window_seconds(self) -> int:
        n, unit = int(self.completion_window[:-1]), self.completion_window[-1]
        return n * (3600 if unit == "h" else 60)


class BatchCreate(BatchOptions):
    requests: list[Any] = Field(
        min_length=1,
        max_length=MAX_REQUESTS,
        description="Each: custom_id, model, format, params.",
        json_schema_extra={"items": REQUEST_SCHEMA},
    )


class RequestCounts(BaseModel):
    processing: int
    succeeded: int
    errored: int
    canceled: int
    expired: int


class BatchOut(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    processing_status: str = Field(description="in_progress | canceling | ended")
    request_counts: RequestCounts
    request_total: int
    metadata: dict[str, str]
    webhook_url: str | None
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    cancel_initiated_at: datetime | None
    usage: UsageCost = Field(description="Tokens and USD billed so far across every request and attempt.")
    estimated_completion_at: datetime | None = Field(description="From the rate requests have finished at so far.")
    results_url: str


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    has_more: bool
    next_cursor: str | None
