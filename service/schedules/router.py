"""Schedules over HTTP: routes parse, call the service, and present."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.deps import CurrentKey, SessionDep, SettingsDep
from service.api.json_body import JSONRoute
from service.api.openapi import id_links
from service.schedules import present, service
from service.schedules.schemas import RunList, RunOut, ScheduleCreate, ScheduleList, ScheduleOut, ScheduleUpdate

router = APIRouter(prefix="/v1/schedules", tags=["schedules"], route_class=JSONRoute)
Limit = Annotated[int, Query(ge=1, le=200)]

_CREATE = """A template submitted on a cron timetable. Each run is a job or a batch carrying
`metadata.schedule_id`; the schedule shows `next_run_at`, `last_run_at` and its latest runs with their outcome.

- `cron`: 5 fields, or @hourly, @daily, @weekly, @monthly, @yearly, read in `timezone` (IANA). Daylight saving
  time follows the zone: a time skipped by the spring change runs once, shifted by the gap; a time repeated by
  the autumn change runs once (every-hour expressions keep their pace).
- `template`: exactly one of `job` (as POST /v1/jobs), `batch` (as POST /v1/batches) or `documents` (a
  directory on the server that the operator allows, one request per file, as POST /v1/batches/documents).
- `overlap`: skip | allow | buffer_one, while the previous run's job or batch is still going.
- `catchup`: skip | run_once | all, for due times missed while no scheduler ran, up to `catchup_window` seconds.

Webhook events: `schedule.run.started` when a run's job or batch is created, `schedule.run.ended` when it has
finished (or when a run could not be created)."""


def _out(session: SessionDep, schedule_id: str, key: CurrentKey) -> ScheduleOut:
    return present.schedules_out(session, [service.get(session, key=key, schedule_id=schedule_id)])[0]


_LINKS = id_links(
    GetSchedule="GET /v1/schedules/{schedule_id}",
    UpdateSchedule="PATCH /v1/schedules/{schedule_id}",
    PauseSchedule="POST /v1/schedules/{schedule_id}/pause",
    TriggerSchedule="POST /v1/schedules/{schedule_id}/trigger",
    ListRuns="GET /v1/schedules/{schedule_id}/runs",
)


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    summary="Create a schedule",
    description=_CREATE,
    responses={201: _LINKS},
)
def create_schedule(body: ScheduleCreate, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> ScheduleOut:
    schedule = service.create(session, key=key, body=body, settings=settings)
    return present.schedule_out(schedule, [])


@router.get("", response_model=ScheduleList, summary="List schedules, newest first")
def list_schedules(session: SessionDep, key: CurrentKey, limit: Limit = 20, cursor: str | None = None) -> ScheduleList:
    rows, has_more = service.list_page(session, key=key, limit=limit, cursor=cursor)
    return ScheduleList(
        data=present.schedules_out(session, rows),
        has_more=has_more,
        next_cursor=rows[-1].id if has_more and rows else None,
    )


@router.get("/{schedule_id}", response_model=ScheduleOut, summary="Get a schedule, its next run and latest runs")
def get_schedule(schedule_id: str, session: SessionDep, key: CurrentKey) -> ScheduleOut:
    return _out(session, schedule_id, key)


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleOut,
    summary="Change a schedule",
    description="Only the fields given change (`start_at` / `end_at`: null removes them). A change to the timing "
    "or `enabled` computes the next due time again from now.",
)
def update_schedule(
    schedule_id: str, body: ScheduleUpdate, session: SessionDep, key: CurrentKey, settings: SettingsDep
) -> ScheduleOut:
    service.update(session, key=key, schedule_id=schedule_id, body=body, settings=settings)
    return _out(session, schedule_id, key)


@router.delete("/{schedule_id}", status_code=204, summary="Delete a schedule (its jobs and batches stay)")
def delete_schedule(schedule_id: str, session: SessionDep, key: CurrentKey) -> Response:
    service.delete(session, key=key, schedule_id=schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/pause", response_model=ScheduleOut, summary="Pause: no runs until resumed")
def pause_schedule(schedule_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> ScheduleOut:
    service.set_enabled(session, key=key, schedule_id=schedule_id, enabled=False, settings=settings)
    return _out(session, schedule_id, key)


@router.post(
    "/{schedule_id}/resume",
    response_model=ScheduleOut,
    summary="Resume: runs from the next due time (the paused ones are not caught up)",
)
def resume_schedule(schedule_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> ScheduleOut:
    service.set_enabled(session, key=key, schedule_id=schedule_id, enabled=True, settings=settings)
    return _out(session, schedule_id, key)


@router.post(
    "/{schedule_id}/trigger",
    status_code=202,
    response_model=RunOut,
    summary="Run now",
    description="Creates a run at once, paused or not and whatever the overlap policy. If the template cannot be "
    "submitted now (over budget, a directory gone), the answer says why and nothing is stored.",
)
def trigger_schedule(schedule_id: str, session: SessionDep, key: CurrentKey, settings: SettingsDep) -> RunOut:
    run = service.trigger(session, key=key, schedule_id=schedule_id, settings=settings)
    return present.runs_out(session, [run])[0]


@router.get("/{schedule_id}/runs", response_model=RunList, summary="A schedule's runs, newest due time first")
def list_runs(
    schedule_id: str, session: SessionDep, key: CurrentKey, limit: Limit = 20, cursor: str | None = None
) -> RunList:
    rows, has_more = service.list_runs(session, key=key, schedule_id=schedule_id, limit=limit, cursor=cursor)
    return RunList(
        data=present.runs_out(session, rows),
        has_more=has_more,
        next_cursor=rows[-1].id if has_more and rows else None,
    )
