"""Helpers for schedule tests: the caller's key, schedules made at a chosen moment, the events they wrote."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import new_id, utcnow
from service.models import ApiKey, Job, Schedule, ScheduleRun, WebhookEndpoint, WebhookEvent
from service.schedules import service
from service.schedules.schemas import ScheduleCreate
from service.tenants import service as tenants
from tests.reading import land

JOB: dict[str, Any] = {
    "model": "MiniMax-M2.7",
    "params": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture
def key(session: Session, api_key: str) -> ApiKey:
    found = tenants.authenticate(session, secret=api_key)
    assert found is not None
    return found


def make_schedule(session: Session, key: ApiKey, settings: Settings, *, now: datetime, **fields: Any) -> Schedule:
    body = {"name": "test", "cron": "* * * * *", "timezone": "UTC", "template": {"job": JOB}, **fields}
    schedule = service.create(session, key=key, body=ScheduleCreate.model_validate(body), settings=settings, now=now)
    session.commit()
    return schedule


def listen(session: Session, tenant_id: str) -> None:
    """A webhook endpoint, so the schedule events are written (nobody listening: none are)."""
    now = utcnow()
    session.add(
        WebhookEndpoint(
            id=new_id("we"), tenant_id=tenant_id, url="https://example.com/hook", description="", event_types=[],
            enabled=True, secret="whsec_test", created_at=now, updated_at=now,
        )
    )  # fmt: skip
    session.commit()


def events(session: Session, type: str) -> list[dict[str, Any]]:
    rows = session.scalars(select(WebhookEvent).where(WebhookEvent.type == type).order_by(WebhookEvent.id))
    return [dict(e.data) for e in rows]


def runs_of(session: Session, schedule_id: str) -> list[ScheduleRun]:
    session.expire_all()
    query = select(ScheduleRun).where(ScheduleRun.schedule_id == schedule_id).order_by(ScheduleRun.due_at)
    return list(session.scalars(query))


def finish_job(session: Session, job_id: str, status: str = "succeeded") -> None:
    land(session, Job.id == job_id, status)
