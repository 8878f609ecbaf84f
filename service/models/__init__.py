"""All ORM tables, imported here so Alembic and the app see one metadata."""

from service.models.base import Base
from service.models.job import ACTIVE, TERMINAL, WAITING, Job, JobAttempt, JobStatus
from service.models.tenant import ApiKey, Tenant

__all__ = ["ACTIVE", "TERMINAL", "WAITING", "ApiKey", "Base", "Job", "JobAttempt", "JobStatus", "Tenant"]
