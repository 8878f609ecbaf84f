from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.batches.schemas import REQUEST_SCHEMA, BatchCreate, BatchOptions, RequestCounts
from service.jobs.schemas import JobCreate
from service.validation import Moment

MAX_TEMPLATE_REQUESTS = 10_000
MAX_CATCHUP_WINDOW = 7 * 86400
OverlapPolicy = Literal["skip", "allow", "buffer_one"]
CatchupPolicy = Literal["skip", "run_once", "all"]


class BatchTemplate(BatchCreate):
    requests: list[Any] = Field(
        min_length=1,
        max_length=MAX_TEMPLATE_REQUESTS,
        description="Each: custom_id, model, format, params (as for POST /v1/batches).",
        json_schema_extra={"items": REQUEST_SCHEMA},
    )


class DocumentSource(BatchOptions):
    """Files in a directory on the server, one request per file, read anew at every run."""

    directory: str = Field(
        description="An absolute path inside a directory the operator allows (MMJOBS_SCHEDULE_SOURCE_DIRS)."
    )
    pattern: str = Field(
        "*", min_length=1, max_length=200, description="Which file names to take (a glob, e.g. *.pdf)."
    )
    model: str = Field(description="A MiniMax model, e.g. MiniMax-M2.7.")
    prompt: str = Field(
        min_length=1, description="Template filled per file: {document} = its text, {filename} = its name."
    )
    system: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="Merged into every request's params.")
    format: Literal["anthropic", "openai"] = "anthropic"


class Template(BaseModel):
    """What each run submits: exactly one of `job`, `batch` or `documents`."""

    model_config = ConfigDict(extra="forbid")

    job: JobCreate | None = Field(None, description="A job body, as for POST /v1/jobs.")
    batch: BatchTemplate | None = Field(None, description="A batch body, as for POST /v1/batches (JSON).")
    documents: DocumentSource | None = Field(
        None, description="A directory of documents on the server, as for POST /v1/batches/documents."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Template:
        given = [name for name in ("job", "batch", "documents") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of job, batch or documents")
        return self

    @property
    def kind(self) -> str:
        return "job" if self.job is not None else "batch" if self.batch is not None else "documents"


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(
        min_length=1,
        max_length=120,
        description="5 fields (minute hour day-of-month month day-of-week), or @hourly, @daily, @weekly, @monthly, "
        "@yearly. Read as wall-clock time in `timezone`.",
        examples=["0 9 * * 1-5"],
    )
    timezone: str = Field(
        "UTC", max_length=64, description="An IANA timezone, e.g. Europe/Paris.", examples=["UTC", "Europe/Paris"]
    )
    template: Template
    overlap: OverlapPolicy = Field(
        "skip",
        description="While the previous run is still going: skip the due time, allow the run, or buffer_one (run "
        "it when the previous one ends; further due times are skipped meanwhile).",
    )
    catchup: CatchupPolicy = Field(
        "run_once",
        description="Due times missed while no scheduler ran (found over 60 s late): skip them, run_once (the "
        "latest), or all, as long as they are at most `catchup_window` seconds old.",
    )
    catchup_window: int = Field(86400, ge=0, le=MAX_CATCHUP_WINDOW, description="Seconds.")
    enabled: bool = True
    start_at: Moment | None = Field(None, description="No run before this time (RFC 3339 with a zone).")
    end_at: Moment | None = Field(None, description="No run after this time (RFC 3339 with a zone).")


class ScheduleUpdate(BaseModel):
    """Only the fields given change; `start_at` / `end_at` set to null are removed."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=200)
    cron: str | None = Field(None, min_length=1, max_length=120)
    timezone: str | None = Field(None, max_length=64)
    template: Template | None = None
    overlap: OverlapPolicy | None = None
    catchup: CatchupPolicy | None = None
    catchup_window: int | None = Field(None, ge=0, le=MAX_CATCHUP_WINDOW)
    enabled: bool | None = None
    start_at: Moment | None = None
    end_at: Moment | None = None


class RunOut(BaseModel):
    id: str
    object: Literal["schedule_run"] = "schedule_run"
    schedule_id: str
    due_at: datetime = Field(description="The due time this run is for (the request time for a manual trigger).")
    trigger: str = Field(description="schedule | catchup (a missed due time) | buffered (waited for the previous "
                         "run) | manual")  # fmt: skip
    status: str = Field(description="started | ended | skipped (overlap policy) | failed (not created: see error)")
    outcome: str | None = Field(
        description="The job's status, or the batch's (in_progress, canceling; once ended: succeeded, partial, "
        "failed, canceled); `deleted` if it was deleted before it ended."
    )
    job_id: str | None
    batch_id: str | None
    request_counts: RequestCounts | None = Field(description="For a batch run.")
    error: str | None
    created_at: datetime
    ended_at: datetime | None


class ScheduleOut(BaseModel):
    id: str
    object: Literal["schedule"] = "schedule"
    name: str
    cron: str
    timezone: str
    template: dict[str, Any]
    overlap: str
    catchup: str
    catchup_window: int
    enabled: bool
    start_at: datetime | None
    end_at: datetime | None
    next_run_at: datetime | None = Field(description="None while paused or once end_at has passed.")
    buffered_run_at: datetime | None = Field(description="buffer_one: the due time waiting for the running one.")
    last_run_at: datetime | None = Field(description="When the latest run started.")
    paused_reason: str | None = Field(
        None,
        description="Why it does not run though nobody paused it by request: `api_key_revoked: ...` (the key it was "
        "made with was revoked; resume it with another key), or `tenant_disabled: ...` (nothing of the tenant runs).",
    )
    paused_at: datetime | None = Field(None, description="When it was paused.")
    created_at: datetime
    updated_at: datetime
    latest_runs: list[RunOut] = Field(description="The latest runs, newest first.")


class ScheduleList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ScheduleOut]
    has_more: bool
    next_cursor: str | None


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunOut]
    has_more: bool
    next_cursor: str | None
