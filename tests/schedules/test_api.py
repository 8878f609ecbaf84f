"""The schedules API: create, read, list, change, pause, resume, trigger, delete; errors that name the field."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import ApiKey, Job, ScheduleRun
from service.usage import budgets
from tests.conftest import make_key
from tests.schedules.conftest import JOB

URL = "/v1/schedules"


def body(**fields: Any) -> dict[str, Any]:
    return {
        "name": "daily digest",
        "cron": "0 9 * * 1-5",
        "timezone": "Europe/Paris",
        "template": {"job": JOB},
        **fields,
    }


def create(client: TestClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    r = client.post(URL, json=body(**fields), headers=auth)
    assert r.status_code == 201, r.text
    return dict(r.json())


def error(client: TestClient, auth: dict[str, str], status: int = 422, **fields: Any) -> dict[str, Any]:
    r = client.post(URL, json=body(**fields), headers=auth)
    assert r.status_code == status, r.text
    return dict(r.json()["error"])


def test_create_get_and_list(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth, overlap="buffer_one", catchup="all", catchup_window=600)
    assert created["id"].startswith("sch_")
    assert created["enabled"] is True
    assert created["latest_runs"] == []
    assert created["last_run_at"] is None
    assert created["next_run_at"].endswith(("07:00:00Z", "08:00:00Z"))  # 09:00 Paris, summer or winter
    assert (created["overlap"], created["catchup"], created["catchup_window"]) == ("buffer_one", "all", 600)
    assert created["template"] == {"job": JOB}
    fetched = client.get(f"{URL}/{created['id']}", headers=auth).json()
    assert fetched["next_run_at"] == created["next_run_at"]
    other = create(client, auth, name="second")
    listed = client.get(URL, params={"limit": 1}, headers=auth).json()
    assert [s["id"] for s in listed["data"]] == [other["id"]]
    assert listed["has_more"] is True
    rest = client.get(URL, params={"cursor": listed["next_cursor"]}, headers=auth).json()
    assert [s["id"] for s in rest["data"]] == [created["id"]]
    assert rest["has_more"] is False


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone"),
        ({"cron": "0 9 * *"}, "cron", "5 fields"),
        ({"cron": "@sometimes"}, "cron", "alias"),
        ({"cron": "0 0 30 2 *"}, "cron", "never"),
        ({"overlap": "queue"}, "overlap", ""),
        ({"catchup_window": 10**9}, "catchup_window", ""),
        ({"template": {}}, "template", "exactly one"),
        ({"template": {"job": JOB, "batch": {"requests": [{"custom_id": "a", **JOB}]}}}, "template", "exactly one"),
        ({"template": {"job": {**JOB, "params": {**JOB["params"], "temperature": 3}}}},
         "template.job.params.temperature", "outside"),
        ({"template": {"job": {**JOB, "model": "gpt-4"}}}, "template.job.model", "unknown model"),
        ({"template": {"job": {**JOB, "metadata": {str(i): "x" for i in range(16)}}}}, "template.job.metadata", "15"),
        ({"template": {"batch": {"requests": [{"custom_id": "a", **JOB}, {"custom_id": "a", **JOB}]}}},
         "template.batch.requests[1].custom_id", "already used"),
        ({"start_at": "2030-01-01T00:00:00"}, "start_at", "timezone"),
        ({"start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at", "after start_at"),
        ({"end_at": "2020-01-01T00:00:00Z"}, "end_at", "no due time"),
        ({"template": {"documents": {"directory": "/tmp", "model": "MiniMax-M2.7", "prompt": "Sum up {document}"}}},
         "template.documents.directory", "allows no document directories"),
    ],
)  # fmt: skip
def test_errors_name_the_field(
    client: TestClient, auth: dict[str, str], fields: dict[str, Any], field: str, says: str
) -> None:
    found = error(client, auth, **fields)
    assert found["field"] == field
    assert says in found["message"]


def test_nothing_is_stored_when_the_batch_template_is_refused(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    requests = [{"custom_id": "a", **JOB}, {"custom_id": "b", "model": "nope", "params": {}}]
    found = error(client, auth, template={"batch": {"requests": requests}})
    assert found["field"].startswith("template.batch.requests[1]")
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert client.get(URL, headers=auth).json()["data"] == []


def test_patch_pause_resume(client: TestClient, auth: dict[str, str]) -> None:
    # At half past: its next run is never on the hour, so it cannot equal the @hourly one whatever the clock says
    # (the weekday 09:00 Paris default equals it between 07:00 and 08:00 UTC).
    created = create(client, auth, cron="30 9 * * 1-5", end_at="2099-01-01T00:00:00Z")
    url = f"{URL}/{created['id']}"
    changed = client.patch(url, json={"cron": "@hourly", "timezone": "UTC", "end_at": None}, headers=auth)
    assert changed.status_code == 200, changed.text
    after = changed.json()
    assert after["cron"] == "@hourly"
    assert after["end_at"] is None
    assert after["next_run_at"].endswith(":00:00Z")
    assert after["next_run_at"] != created["next_run_at"]
    renamed = client.patch(url, json={"name": "renamed", "overlap": "allow"}, headers=auth).json()
    assert (renamed["name"], renamed["overlap"], renamed["next_run_at"]) == ("renamed", "allow", after["next_run_at"])
    bad = client.patch(url, json={"name": None}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "name"
    bad = client.patch(url, json={"timezone": "Nowhere/Land"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "timezone"
    paused = client.post(f"{url}/pause", headers=auth).json()
    assert paused["enabled"] is False
    assert paused["next_run_at"] is None
    resumed = client.post(f"{url}/resume", headers=auth).json()
    assert resumed["enabled"] is True
    assert resumed["next_run_at"] is not None


def test_trigger_runs_now_even_when_paused(client: TestClient, auth: dict[str, str], session: Session) -> None:
    created = create(client, auth, enabled=False)
    r = client.post(f"{URL}/{created['id']}/trigger", headers=auth)
    assert r.status_code == 202, r.text
    run = r.json()
    assert (run["trigger"], run["status"], run["outcome"]) == ("manual", "started", "queued")
    job = client.get(f"/v1/jobs/{run['job_id']}", headers=auth).json()
    assert job["metadata"] == {"schedule_id": created["id"]}
    shown = client.get(f"{URL}/{created['id']}", headers=auth).json()
    assert [r["id"] for r in shown["latest_runs"]] == [run["id"]]
    assert shown["last_run_at"] is not None
    assert shown["next_run_at"] is None
    second = client.post(f"{URL}/{created['id']}/trigger", headers=auth).json()
    page = client.get(f"{URL}/{created['id']}/runs", params={"limit": 1}, headers=auth).json()
    assert [r["id"] for r in page["data"]] == [second["id"]]
    assert page["has_more"] is True
    rest = client.get(f"{URL}/{created['id']}/runs", params={"cursor": page["next_cursor"]}, headers=auth).json()
    assert [r["id"] for r in rest["data"]] == [run["id"]]


def test_trigger_over_budget_answers_402_and_stores_nothing(
    client: TestClient, auth: dict[str, str], session: Session, key: ApiKey
) -> None:
    created = create(client, auth)
    budgets.upsert(
        session, tenant_id=key.tenant_id, api_key_id=None, period="total", limit_usd=Decimal(0), soft_limit_usd=None,
        now=utcnow(),
    )  # fmt: skip
    session.commit()
    r = client.post(f"{URL}/{created['id']}/trigger", headers=auth)
    assert r.status_code == 402, r.text
    assert session.scalar(select(func.count()).select_from(ScheduleRun)) == 0


def test_delete_keeps_the_jobs(client: TestClient, auth: dict[str, str]) -> None:
    created = create(client, auth)
    run = client.post(f"{URL}/{created['id']}/trigger", headers=auth).json()
    assert client.delete(f"{URL}/{created['id']}", headers=auth).status_code == 204
    assert client.get(f"{URL}/{created['id']}", headers=auth).status_code == 404
    assert client.get(f"/v1/jobs/{run['job_id']}", headers=auth).status_code == 200


def test_other_tenants_see_nothing(client: TestClient, auth: dict[str, str], session: Session) -> None:
    created = create(client, auth)
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    for method, suffix in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/pause"), ("POST", "/trigger")]:
        r = client.request(
            method, f"{URL}/{created['id']}{suffix}", json={} if method == "PATCH" else None, headers=other
        )
        assert r.status_code == 404, (method, suffix, r.text)
    assert client.get(URL, headers=other).json()["data"] == []
    assert client.get(URL).status_code == 401
