"""The Anthropic Message Batches and OpenAI Batch drop-ins, in process: their objects exactly as the official SDKs
type them, pagination, delete and cancel rules, errors in each API's own shape naming the field at fault, tenant
isolation, and a bad request or line storing nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic.types.messages as anthropic_types
import openai.types as openai_types
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.config import Settings
from service.models import Batch, File, Job
from tests import reading
from tests.conftest import make_key

MODEL = "MiniMax-M2.7"
ANTHROPIC = "/anthropic/v1/messages/batches"
OPENAI = "/openai/v1"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": str(tmp_path / "files")})


@pytest.fixture
def x_api_key(api_key: str) -> dict[str, str]:
    # What the Anthropic SDK sends.
    return {"x-api-key": api_key, "anthropic-version": "2023-06-01"}


def message_request(i: int, **params: Any) -> dict[str, Any]:
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": f"Summarize doc {i}"}]}
    return {"custom_id": f"doc-{i}", "params": body | params}


def chat_line(i: int, **body: Any) -> dict[str, Any]:
    payload = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": f"Classify {i}"}]}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": payload | body}


def stored(session: Session) -> tuple[int, int, int]:
    def count(model: type[Batch] | type[Job] | type[File]) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    return count(Batch), count(Job), count(File)


def land(session: Session, batch_id: str, custom_id: str, status: str, **values: Any) -> None:
    reading.land(session, (Job.batch_id == batch_id) & (Job.custom_id == custom_id), status, **values)


def create_message_batch(client: TestClient, headers: dict[str, str], n: int = 1) -> dict[str, Any]:
    r = client.post(ANTHROPIC, json={"requests": [message_request(i) for i in range(n)]}, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def upload(client: TestClient, auth: dict[str, str], lines: list[Any]) -> dict[str, Any]:
    """Upload a JSONL file: one line per item, strings as they are."""
    content = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()
    files = {"file": ("in.jsonl", content, "application/jsonl")}
    r = client.post(f"{OPENAI}/files", files=files, data={"purpose": "batch"}, headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


def create_openai_batch(client: TestClient, auth: dict[str, str], n: int = 1, **extra: Any) -> dict[str, Any]:
    file_id = upload(client, auth, [chat_line(i) for i in range(n)])["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    r = client.post(f"{OPENAI}/batches", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- Anthropic -------------------------------------------------------------------------------------------------


def test_message_batch_object_is_anthropics(client: TestClient, x_api_key: dict[str, str]) -> None:
    batch = create_message_batch(client, x_api_key, n=3)
    assert set(batch) == set(anthropic_types.MessageBatch.model_fields)
    anthropic_types.MessageBatch.model_validate(batch)  # strict: every field the SDK types, with its type
    assert batch["id"].startswith("msgbatch_")
    assert (batch["type"], batch["processing_status"]) == ("message_batch", "in_progress")
    assert batch["request_counts"] == {"processing": 3, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    # No results URL until the batch has ended, as Anthropic does.
    assert (batch["results_url"], batch["ended_at"], batch["archived_at"]) == (None, None, None)
    created = datetime.fromisoformat(batch["created_at"])
    assert created.tzinfo is not None
    assert datetime.fromisoformat(batch["expires_at"]) - created == timedelta(hours=24)
    assert client.get(f"{ANTHROPIC}/{batch['id']}", headers=x_api_key).json() == batch


def test_results_once_ended_in_anthropics_line_shapes(
    client: TestClient, x_api_key: dict[str, str], session: Session
) -> None:
    bid = create_message_batch(client, x_api_key, n=4)["id"]
    r = client.get(f"{ANTHROPIC}/{bid}/results", headers=x_api_key)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    message = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": MODEL, "stop_reason": "end_turn",
        "stop_sequence": None, "content": [{"type": "text", "text": "hi"}],
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }  # fmt: skip
    land(session, bid, "doc-0", "succeeded", result={"raw": message, "usage": {"input_tokens": 5}})
    error = {"type": "base_resp", "message": "invalid params (2013)", "http_status": 400}
    land(session, bid, "doc-1", "failed", error=error)
    land(session, bid, "doc-2", "expired")
    batch = client.post(f"{ANTHROPIC}/{bid}/cancel", headers=x_api_key).json()
    assert batch["processing_status"] == "ended"
    assert batch["cancel_initiated_at"] is not None
    assert batch["results_url"] == f"http://testserver{ANTHROPIC}/{bid}/results"
    assert batch["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 1, "canceled": 1, "expired": 1}
    r = client.get(batch["results_url"], headers=x_api_key)
    assert r.status_code == 200
    lines = {x["custom_id"]: x for x in map(json.loads, r.text.splitlines())}
    for line in lines.values():
        anthropic_types.MessageBatchIndividualResponse.model_validate(line)
    assert lines["doc-0"] == {"custom_id": "doc-0", "result": {"type": "succeeded", "message": message}}
    assert lines["doc-1"]["result"] == {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "invalid params (2013)"}},
    }
    assert lines["doc-2"]["result"] == {"type": "expired"}
    assert lines["doc-3"]["result"] == {"type": "canceled"}


def test_list_pages_newest_first_both_ways(client: TestClient, x_api_key: dict[str, str]) -> None:
    ids = [create_message_batch(client, x_api_key)["id"] for _ in range(5)][::-1]  # newest first
    first = client.get(ANTHROPIC, params={"limit": 2}, headers=x_api_key).json()
    assert [b["id"] for b in first["data"]] == ids[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    second = client.get(ANTHROPIC, params={"limit": 2, "after_id": first["last_id"]}, headers=x_api_key).json()
    assert [b["id"] for b in second["data"]] == ids[2:4]
    third = client.get(ANTHROPIC, params={"limit": 2, "after_id": second["last_id"]}, headers=x_api_key).json()
    assert ([b["id"] for b in third["data"]], third["has_more"]) == ([ids[4]], False)
    # Back towards the newest: the page just before the second one.
    back = client.get(ANTHROPIC, params={"limit": 2, "before_id": second["first_id"]}, headers=x_api_key).json()
    assert ([b["id"] for b in back["data"]], back["has_more"]) == (ids[:2], False)
    back = client.get(ANTHROPIC, params={"limit": 1, "before_id": ids[2]}, headers=x_api_key).json()
    assert ([b["id"] for b in back["data"]], back["has_more"]) == ([ids[1]], True)
    assert len(client.get(ANTHROPIC, headers=x_api_key).json()["data"]) == 5
    empty = client.get(ANTHROPIC, params={"after_id": ids[4]}, headers=x_api_key).json()
    assert empty == {"data": [], "first_id": None, "last_id": None, "has_more": False}


def test_delete_only_once_ended(client: TestClient, x_api_key: dict[str, str], session: Session) -> None:
    bid = create_message_batch(client, x_api_key, n=2)["id"]
    r = client.delete(f"{ANTHROPIC}/{bid}", headers=x_api_key)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    session.execute(update(Job).where(Job.batch_id == bid, Job.custom_id == "doc-0").values(status="running"))
    session.commit()
    assert client.post(f"{ANTHROPIC}/{bid}/cancel", headers=x_api_key).json()["processing_status"] == "canceling"
    assert client.delete(f"{ANTHROPIC}/{bid}", headers=x_api_key).status_code == 400
    land(session, bid, "doc-0", "succeeded", result={"raw": {}, "usage": {}})
    r = client.delete(f"{ANTHROPIC}/{bid}", headers=x_api_key)
    assert r.status_code == 200
    assert r.json() == {"id": bid, "type": "message_batch_deleted"}
    r = client.get(f"{ANTHROPIC}/{bid}", headers=x_api_key)
    assert (r.status_code, r.json()["type"], r.json()["error"]["type"]) == (404, "error", "not_found_error")


@pytest.mark.parametrize(
    ("requests", "needle"),
    [
        ([message_request(0), message_request(1, temperature=3)], "requests[1].params.temperature"),
        ([message_request(0, model="MiniMax-X")], "requests[0].params.model"),
        ([{"custom_id": "doc-0", "params": {"max_tokens": 10, "messages": []}}], "requests[0].params.model"),
        ([message_request(0), message_request(0)], "requests[1].custom_id"),
        ([message_request(0, stream=True)], "requests[0].params.stream"),
        ([message_request(0) | {"model": MODEL}], "requests[0].model"),
        ([{"custom_id": "bad id", "params": message_request(0)["params"]}], "requests[0].custom_id"),
        ([], "requests"),
    ],
)
def test_a_bad_request_stores_nothing_and_names_its_field(
    client: TestClient, x_api_key: dict[str, str], session: Session, requests: list[Any], needle: str
) -> None:
    before = stored(session)
    r = client.post(ANTHROPIC, json={"requests": requests}, headers=x_api_key)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(needle), body
    assert stored(session) == before


def test_anthropic_shaped_errors_for_auth_json_and_params(client: TestClient, x_api_key: dict[str, str]) -> None:
    r = client.get(ANTHROPIC)
    assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")
    r = client.get(ANTHROPIC, headers={"x-api-key": "mmj_wrong"})
    assert (r.status_code, r.json()["error"]["type"]) == (401, "authentication_error")
    r = client.post(ANTHROPIC, content=b"{oops", headers=x_api_key | {"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["type"]) == (400, "invalid_request_error")
    r = client.get(ANTHROPIC, params={"limit": 1001}, headers=x_api_key)
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("limit:")


def test_other_tenants_and_other_apis_batches_are_404(
    client: TestClient, x_api_key: dict[str, str], auth: dict[str, str], session: Session
) -> None:
    bid = create_message_batch(client, x_api_key)["id"]
    other = {"x-api-key": make_key(session, "globex")}
    for method, path in [("GET", ""), ("GET", "/results"), ("POST", "/cancel"), ("DELETE", "")]:
        r = client.request(method, f"{ANTHROPIC}/{bid}{path}", headers=other)
        assert (r.status_code, r.json()["error"]["type"]) == (404, "not_found_error")
    assert client.get(ANTHROPIC, headers=other).json()["data"] == []
    # Each API sees only its own batches.
    assert client.get(f"{OPENAI}/batches/{bid}", headers=auth).status_code == 404
    native = client.post("/v1/batches", json={"requests": [{"custom_id": "a", "model": MODEL, "params": {
        "messages": [{"role": "user", "content": "x"}]}}]}, headers=auth).json()["id"]  # fmt: skip
    assert client.get(f"{ANTHROPIC}/{native}", headers=x_api_key).status_code == 404
    assert [b["id"] for b in client.get(ANTHROPIC, headers=x_api_key).json()["data"]] == [bid]


# --- OpenAI ----------------------------------------------------------------------------------------------------


def test_file_upload_retrieve_and_content(client: TestClient, auth: dict[str, str], settings: Settings) -> None:
    lines = [chat_line(i) for i in range(3)]
    file = upload(client, auth, lines)
    assert set(file) == set(openai_types.FileObject.model_fields)
    openai_types.FileObject.model_validate(file)
    content = "".join(json.dumps(x) + "\n" for x in lines).encode()
    assert file["id"].startswith("file-")
    assert (file["object"], file["purpose"], file["status"]) == ("file", "batch", "processed")
    assert file["filename"] == "in.jsonl"
    assert (file["bytes"], type(file["created_at"])) == (len(content), int)
    assert (Path(str(settings.files_dir)) / file["id"]).read_bytes() == content
    assert client.get(f"{OPENAI}/files/{file['id']}", headers=auth).json() == file
    r = client.get(f"{OPENAI}/files/{file['id']}/content", headers=auth)
    assert (r.status_code, r.content) == (200, content)
    r = client.delete(f"{OPENAI}/files/{file['id']}", headers=auth)
    assert r.json() == {"id": file["id"], "object": "file", "deleted": True}
    openai_types.FileDeleted.model_validate(r.json())
    assert not (Path(str(settings.files_dir)) / file["id"]).exists()
    assert client.get(f"{OPENAI}/files/{file['id']}", headers=auth).status_code == 404
    assert client.delete(f"{OPENAI}/files/{file['id']}", headers=auth).status_code == 404


def test_openai_batch_object_is_openais(client: TestClient, auth: dict[str, str]) -> None:
    batch = create_openai_batch(client, auth, n=3, metadata={"run": "7"})
    assert set(batch) == set(openai_types.Batch.model_fields)
    openai_types.Batch.model_validate(batch)
    assert batch["id"].startswith("batch_")
    assert (batch["object"], batch["status"], batch["endpoint"]) == ("batch", "in_progress", "/v1/chat/completions")
    assert batch["completion_window"] == "24h"
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"run": "7"}
    assert batch["model"] == MODEL
    assert (batch["errors"], batch["output_file_id"], batch["error_file_id"]) == (None, None, None)
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    assert batch["in_progress_at"] == batch["created_at"]
    assert client.get(f"{OPENAI}/batches/{batch['id']}", headers=auth).json() == batch


def test_output_and_error_files_are_written_from_the_jobs(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    batch = create_openai_batch(client, auth, n=4)
    bid = batch["id"]
    completion = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {"prompt_tokens": 9}}
    result = {"raw": completion, "upstream_request_id": "up-1", "usage": {}}
    land(session, bid, "req-0", "succeeded", result=result, input_tokens=9, output_tokens=4, cache_read_tokens=2)
    land(session, bid, "req-1", "failed", error={"type": "invalid_request_error", "message": "bad", "http_status": 400})
    land(session, bid, "req-2", "expired")
    r = client.post(f"{OPENAI}/batches/{bid}/cancel", headers=auth)
    assert r.status_code == 200
    batch = r.json()
    openai_types.Batch.model_validate(batch)
    assert batch["status"] == "cancelled"
    assert None not in (batch["cancelling_at"], batch["cancelled_at"])
    assert batch["request_counts"] == {"total": 4, "completed": 1, "failed": 1}
    assert batch["usage"]["input_tokens"] == 11
    assert batch["usage"]["input_tokens_details"] == {"cached_tokens": 2}
    assert batch["usage"]["total_tokens"] == 15
    out = client.get(f"{OPENAI}/files/{batch['output_file_id']}/content", headers=auth)
    assert out.status_code == 200
    [line] = [json.loads(x) for x in out.text.splitlines()]
    assert line["custom_id"] == "req-0"
    assert line["response"] == {"status_code": 200, "request_id": "up-1", "body": completion}
    assert line["error"] is None
    errors = client.get(f"{OPENAI}/files/{batch['error_file_id']}/content", headers=auth)
    by_id = {x["custom_id"]: x for x in map(json.loads, errors.text.splitlines())}
    assert by_id["req-1"]["response"]["status_code"] == 400
    assert by_id["req-1"]["error"] == {"code": "invalid_request_error", "message": "bad"}
    assert (by_id["req-2"]["response"], by_id["req-2"]["error"]["code"]) == (None, "batch_expired")
    assert by_id["req-3"]["error"]["code"] == "batch_cancelled"
    file = client.get(f"{OPENAI}/files/{batch['error_file_id']}", headers=auth).json()
    openai_types.FileObject.model_validate(file)
    assert (file["bytes"], file["purpose"]) == (len(errors.content), "batch_output")
    assert client.delete(f"{OPENAI}/files/{batch['error_file_id']}", headers=auth).status_code == 400
    # A finished batch cannot be cancelled again (OpenAI: 409).
    r = client.post(f"{OPENAI}/batches/{bid}/cancel", headers=auth)
    assert (r.status_code, r.json()["error"]["type"]) == (409, "invalid_request_error")


def test_a_finished_batch_without_problems_is_completed(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    bid = create_openai_batch(client, auth, n=1)["id"]
    land(session, bid, "req-0", "succeeded", result={"raw": {}, "usage": {}})
    batch = client.get(f"{OPENAI}/batches/{bid}", headers=auth).json()
    assert (batch["status"], batch["error_file_id"]) == ("completed", None)
    assert None not in (batch["completed_at"], batch["output_file_id"])
    assert client.get(f"{OPENAI}/files/file-errors-{bid.removeprefix('batch_')}", headers=auth).status_code == 404


def test_openai_list_pages_with_after(client: TestClient, auth: dict[str, str]) -> None:
    ids = [create_openai_batch(client, auth)["id"] for _ in range(3)][::-1]
    first = client.get(f"{OPENAI}/batches", params={"limit": 2}, headers=auth).json()
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == ids[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (ids[0], ids[1], True)
    second = client.get(f"{OPENAI}/batches", params={"limit": 2, "after": ids[1]}, headers=auth).json()
    assert ([b["id"] for b in second["data"]], second["has_more"]) == ([ids[2]], False)


@pytest.mark.parametrize(
    ("bad", "line", "param"),
    [
        (chat_line(9, temperature=3), 3, "body.temperature"),
        (chat_line(9, model="gpt-4o"), 3, "body.model"),
        (chat_line(0), 3, "custom_id"),
        (chat_line(9, stream=True), 3, "body.stream"),
        ({**chat_line(9), "url": "/v1/embeddings"}, 3, "url"),
        ({**chat_line(9), "method": "GET"}, 3, "method"),
        (42, 3, None),
        ("{broken", 3, None),
    ],
)
def test_a_bad_line_stores_no_batch_and_names_line_and_field(
    client: TestClient, auth: dict[str, str], session: Session, bad: Any, line: int, param: str | None
) -> None:
    file_id = upload(client, auth, [chat_line(0), chat_line(1), bad, chat_line(3)])["id"]
    before = stored(session)
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    r = client.post(f"{OPENAI}/batches", json=body, headers=auth)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"].startswith(f"line {line}"), error
    assert stored(session) == before


def test_openai_shaped_errors(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get(f"{OPENAI}/batches")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    r = client.get(f"{OPENAI}/batches/batch_nope", headers=auth)
    assert (r.status_code, r.json()["error"]["type"]) == (404, "invalid_request_error")
    file_id = upload(client, auth, [chat_line(0)])["id"]
    for field, value in [("endpoint", "/v1/embeddings"), ("completion_window", "48h"), ("input_file_id", "file-x")]:
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", field: value}
        r = client.post(f"{OPENAI}/batches", json=body, headers=auth)
        assert r.status_code in (400, 404), r.text
        assert r.json()["error"]["param"] == field
    r = client.post(f"{OPENAI}/batches", json={"endpoint": "/v1/chat/completions"}, headers=auth)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "input_file_id")
    r = client.post(f"{OPENAI}/files", files={"file": ("a.txt", b"x")}, data={"purpose": "fine-tune"}, headers=auth)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "purpose")
    r = client.post(f"{OPENAI}/files", data={"purpose": "batch"}, headers=auth)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "file")
    r = client.get(f"{OPENAI}/batches", params={"limit": 101}, headers=auth)
    assert (r.status_code, r.json()["error"]["param"]) == (400, "limit")


def test_other_tenants_files_and_batches_are_404(client: TestClient, auth: dict[str, str], session: Session) -> None:
    batch = create_openai_batch(client, auth)
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    for method, path in [
        ("GET", f"/batches/{batch['id']}"),
        ("POST", f"/batches/{batch['id']}/cancel"),
        ("GET", f"/files/{batch['input_file_id']}"),
        ("GET", f"/files/{batch['input_file_id']}/content"),
    ]:
        assert client.request(method, OPENAI + path, headers=other).status_code == 404
    assert client.get(f"{OPENAI}/batches", headers=other).json()["data"] == []
    body = {"input_file_id": batch["input_file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    assert client.post(f"{OPENAI}/batches", json=body, headers=other).status_code == 404
