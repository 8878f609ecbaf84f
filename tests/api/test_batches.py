"""The batches API: submit as JSON, JSONL or multipart; every line validated; nothing stored on a bad line;
exact counts; streamed results; cancel; delete."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.models import Batch, Job
from tests import reading
from tests.conftest import make_key


def request(i: int, **overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "custom_id": f"doc-{i}",
        "model": "MiniMax-M2.7",
        "params": {"max_tokens": 100, "messages": [{"role": "user", "content": f"Summarize document {i}"}]},
    }
    out.update(overrides)
    return out


def counts(session: Session) -> tuple[int, int]:
    return (
        int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        int(session.scalar(select(func.count()).select_from(Job)) or 0),
    )


def test_json_batch_is_stored_with_every_request(client: TestClient, auth: dict[str, str], session: Session) -> None:
    r = client.post(
        "/v1/batches", json={"requests": [request(i) for i in range(5)], "metadata": {"run": "7"}}, headers=auth
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["id"].startswith("batch_")
    assert batch["processing_status"] == "in_progress"
    assert batch["request_total"] == 5
    assert batch["request_counts"] == {"processing": 5, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    assert batch["metadata"] == {"run": "7"}
    assert batch["results_url"].endswith(f"/v1/batches/{batch['id']}/results")
    listed = client.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 10}, headers=auth).json()["data"]
    assert sorted(j["custom_id"] for j in listed) == [f"doc-{i}" for i in range(5)]
    # Batch requests stay out of the single-job list.
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_jsonl_body_and_multipart_upload(client: TestClient, auth: dict[str, str]) -> None:
    lines = "\n".join(json.dumps(request(i)) for i in range(3)) + "\n\n"
    r = client.post(
        "/v1/batches",
        content=lines.encode(),
        params={"completion_window": "2h"},
        headers={**auth, "content-type": "application/x-ndjson"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["request_total"] == 3
    r = client.post(
        "/v1/batches",
        files={"file": ("reqs.jsonl", lines.encode(), "application/jsonl")},
        data={"metadata": json.dumps({"k": "v"})},
        headers=auth,
    )
    assert r.status_code == 202, r.text
    assert r.json()["metadata"] == {"k": "v"}


@pytest.mark.parametrize(
    ("bad", "field", "needle"),
    [
        (request(2, custom_id="has space"), "requests[2].custom_id", "line 3"),
        (request(2, custom_id="doc-0"), "requests[2].custom_id", "already used"),
        (request(2, model="MiniMax-X"), "requests[2].model", "unknown model"),
        (
            request(2, params={"messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            "requests[2].params.temperature",
            "outside",
        ),
        ("not an object", "requests[2]", "JSON object"),
    ],
)
def test_one_bad_line_rejects_the_whole_batch(
    client: TestClient, auth: dict[str, str], session: Session, bad: Any, field: str, needle: str
) -> None:
    before = counts(session)
    reqs: list[Any] = [request(0), request(1), bad, request(3)]
    r = client.post("/v1/batches", json={"requests": reqs}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert needle in r.json()["error"]["message"]
    assert counts(session) == before
    # The same through JSONL reports the same line.
    body = "\n".join(json.dumps(x) for x in reqs)
    r = client.post("/v1/batches", content=body.encode(), headers={**auth, "content-type": "application/x-ndjson"})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field
    assert counts(session) == before


def test_invalid_jsonl_line_names_its_number(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = counts(session)
    body = json.dumps(request(0)) + "\n{broken\n"
    r = client.post("/v1/batches", content=body.encode(), headers={**auth, "content-type": "application/x-ndjson"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("line 2, column 2: not valid JSON (")
    assert counts(session) == before


def test_unsupported_content_type_is_415(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/batches", content=b"x", headers={**auth, "content-type": "text/plain"})
    assert r.status_code == 415


def land(session: Session, batch_id: str, custom_id: str, status: str, **values: Any) -> None:
    reading.land(session, (Job.batch_id == batch_id) & (Job.custom_id == custom_id), status, **values)


def test_counts_match_the_results_file_and_the_batch_ends(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    batch = client.post("/v1/batches", json={"requests": [request(i) for i in range(4)]}, headers=auth).json()
    bid = batch["id"]
    land(session, bid, "doc-0", "succeeded", result={"raw": {"id": "msg_1", "content": []}, "usage": {}})
    land(session, bid, "doc-1", "failed", error={"type": "invalid_request_error", "message": "bad (2013)"})
    partial = client.get(f"/v1/batches/{bid}/results", headers=auth)
    assert [json.loads(x)["custom_id"] for x in partial.text.splitlines()] == ["doc-0", "doc-1"]
    assert client.get(f"/v1/batches/{bid}", headers=auth).json()["processing_status"] == "in_progress"
    land(session, bid, "doc-2", "expired")
    r = client.post(f"/v1/batches/{bid}/cancel", headers=auth)
    assert r.json()["processing_status"] == "ended"  # nothing was running: the cancel ends it at once
    final = client.get(f"/v1/batches/{bid}", headers=auth).json()
    assert final["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 1, "canceled": 1, "expired": 1}
    assert final["ended_at"] is not None
    lines = [json.loads(x) for x in client.get(f"/v1/batches/{bid}/results", headers=auth).text.splitlines()]
    by_type: dict[str, int] = {}
    for line in lines:
        by_type[line["result"]["type"]] = by_type.get(line["result"]["type"], 0) + 1
    assert by_type == {k: v for k, v in final["request_counts"].items() if k != "processing"}
    errored = next(x for x in lines if x["result"]["type"] == "errored")
    assert errored["result"]["error"]["message"] == "bad (2013)"
    only = client.get(f"/v1/batches/{bid}/results", params={"status": "succeeded"}, headers=auth).text.splitlines()
    assert [json.loads(x)["custom_id"] for x in only] == ["doc-0"]


def test_cancel_leaves_running_requests_to_finish(client: TestClient, auth: dict[str, str], session: Session) -> None:
    bid = client.post("/v1/batches", json={"requests": [request(i) for i in range(3)]}, headers=auth).json()["id"]
    session.execute(update(Job).where(Job.batch_id == bid, Job.custom_id == "doc-0").values(status="running"))
    session.commit()
    r = client.post(f"/v1/batches/{bid}/cancel", headers=auth).json()
    assert r["processing_status"] == "canceling"
    assert r["request_counts"]["canceled"] == 2
    assert r["request_counts"]["processing"] == 1
    assert client.delete(f"/v1/batches/{bid}", headers=auth).status_code == 409
    land(session, bid, "doc-0", "succeeded", result={"raw": {}, "usage": {}})
    assert client.get(f"/v1/batches/{bid}", headers=auth).json()["processing_status"] == "ended"
    assert client.delete(f"/v1/batches/{bid}", headers=auth).status_code == 204
    assert client.get(f"/v1/batches/{bid}", headers=auth).status_code == 404


def test_other_tenants_batches_are_404(client: TestClient, auth: dict[str, str], session: Session) -> None:
    bid = client.post("/v1/batches", json={"requests": [request(0)]}, headers=auth).json()["id"]
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    for method, path in [("GET", ""), ("GET", "/results"), ("POST", "/cancel"), ("DELETE", "")]:
        assert client.request(method, f"/v1/batches/{bid}{path}", headers=other).status_code == 404
    assert client.get("/v1/batches", headers=other).json()["data"] == []


def test_list_batches_pages_newest_first(client: TestClient, auth: dict[str, str]) -> None:
    ids = [client.post("/v1/batches", json={"requests": [request(0)]}, headers=auth).json()["id"] for _ in range(3)]
    first = client.get("/v1/batches", params={"limit": 2}, headers=auth).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2]
    second = client.get("/v1/batches", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth).json()
    assert [b["id"] for b in second["data"]] == [ids[0]]
    assert second["has_more"] is False
