"""All ORM tables, imported here so Alembic and the app see one metadata."""

from service.models.base import Base
from service.models.batch import BATCH_APIS, COUNT_FOR_STATUS, Batch, BatchStatus, BatchTally
from service.models.file import File
from service.models.idempotency import IdempotencyKey
from service.models.job import ACTIVE, TERMINAL, WAITING, Job, JobAttempt, JobStatus
from service.models.schedule import Catchup, Overlap, RunStatus, Schedule, ScheduleRun
from service.models.tenant import ApiKey, Tenant
from service.models.upstream_key import TenantUpstreamKey
from service.models.usage import Budget, BudgetReservation, UsageEntry
from service.models.webhook import (
    DeliveryStatus,
    TenantWebhookSecret,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)

__all__ = [
    "ACTIVE",
    "BATCH_APIS",
    "COUNT_FOR_STATUS",
    "TERMINAL",
    "WAITING",
    "ApiKey",
    "Base",
    "Batch",
    "BatchStatus",
    "BatchTally",
    "Budget",
    "BudgetReservation",
    "Catchup",
    "DeliveryStatus",
    "File",
    "IdempotencyKey",
    "Job",
    "JobAttempt",
    "JobStatus",
    "Overlap",
    "RunStatus",
    "Schedule",
    "ScheduleRun",
    "Tenant",
    "TenantUpstreamKey",
    "TenantWebhookSecret",
    "UsageEntry",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
