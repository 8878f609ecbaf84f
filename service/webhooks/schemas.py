from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.webhooks.events import EventType

_TYPES_DOC = (
    "Event types to receive; empty: every type except the opt-in ones (`batch.progress` is sent only to "
    "endpoints that list it)."
)


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=2048,
        description="An http(s) URL on the public internet.",
        examples=["https://example.com/hooks/minimax"],
        json_schema_extra={"format": "uri"},
    )
    event_types: list[EventType] = Field(default_factory=list, max_length=32, description=_TYPES_DOC)
    description: str = Field("", max_length=500)


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2048)
    event_types: list[EventType] | None = Field(None, max_length=32, description=_TYPES_DOC)
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = Field(
        None, description="false pauses the endpoint (its pending deliveries fail); true re-enables it."
    )


class Endpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="Why the endpoint was disabled (410 Gone, 5 days of failures).")
    disabled_at: datetime | None
    secret_rotation_ends_at: datetime | None = Field(
        description="During a rotation the previous secret also signs every delivery until this moment."
    )
    created_at: datetime
    updated_at: datetime


class EndpointWithSecret(Endpoint):
    secret: str = Field(description="The signing secret (`whsec_...`). Shown only in this response: keep it.")


class EndpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Endpoint]
    has_more: bool
    next_cursor: str | None


class Attempt(BaseModel):
    number: int
    at: datetime
    url: str
    http_status: int | None
    error: str | None = Field(description="The transport error (timeout, refused address, ...) when no answer came.")
    latency_ms: int
    response_body: str | None = Field(description="The first 2 KB of the answer.")


class Delivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str | None = Field(description="The endpoint; null for a job's or batch's own `webhook_url`.")
    url: str | None = Field(description="The job's or batch's own `webhook_url`; null for an endpoint.")
    status: Literal["pending", "delivered", "failed"]
    attempt_count: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    error: str | None = Field(description="Why it failed for good.")
    created_at: datetime
    attempts: list[Attempt]


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Delivery]
    has_more: bool
    next_cursor: str | None


class TenantSecret(BaseModel):
    object: Literal["webhook_secret"] = "webhook_secret"
    created_at: datetime
    revealed: bool = Field(description="Whether the secret was already shown (it is shown once).")
    rotation_ends_at: datetime | None


class TenantSecretShown(TenantSecret):
    secret: str = Field(
        description="Signs deliveries to every job's and batch's `webhook_url`. Shown only in this response."
    )
