"""The jobs API as a client sees it: submit, poll, list, cancel, and every way a request can be wrong."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Job
from tests.conftest import make_key


def body(**overrides: Any) -> dict[str, Any]:
    params = {
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "Summarize the attached contract."}],
    }
    out: dict[str, Any] = {"model": "MiniMax-M2.7", "params": params}
    out.update(overrides)
    return out


def job_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_submit_returns_202_with_the_queued_job(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json=body(metadata={"team": "legal"}, priority=3), headers=auth)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["format"] == "anthropic"
    assert job["metadata"] == {"team": "legal"}
    assert job["priority"] == 3
    assert job["max_attempts"] == 5
    assert job["estimated_input_tokens"] > 0
    assert job["links"]["self"].endswith(f"/v1/jobs/{job['id']}")
    assert job["result"] is None

    polled = client.get(f"/v1/jobs/{job['id']}", headers=auth)
    assert polled.status_code == 200
    assert polled.json()["status"] == "queued"
    assert polled.json()["created_at"] == job["created_at"]


def test_x_api_key_header_works_too(client: TestClient, api_key: str) -> None:
    r = client.post("/v1/jobs", json=body(), headers={"x-api-key": api_key})
    assert r.status_code == 202


def test_openai_format_is_accepted(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/v1/jobs",
        json=body(
            format="openai",
            params={"max_completion_tokens": 50, "messages": [{"role": "user", "content": "x"}]},
        ),
        headers=auth,
    )
    assert r.status_code == 202
    assert r.json()["format"] == "openai"


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({}, "missing"),
        ({"Authorization": "Bearer mmj_not-a-real-key"}, "invalid"),
        ({"Authorization": "Basic abc"}, "missing"),
        ({"x-api-key": "wrong"}, "invalid"),
    ],
)
def test_bad_credentials_answer_401(client: TestClient, headers: dict[str, str], why: str) -> None:
    r = client.post("/v1/jobs", json=body(), headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert why in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_revoked_key_answers_401(client: TestClient, session: Session) -> None:
    from service.tenants import service as tenants

    new = tenants.create_key(session, tenant_name="revokee")
    session.commit()
    headers = {"Authorization": f"Bearer {new.secret}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    assert tenants.revoke_key(session, key_id=new.key.id)
    session.commit()
    r = client.get("/v1/jobs", headers=headers)
    assert r.status_code == 401
    assert "revoked" in r.json()["error"]["message"]


def test_keys_are_stored_hashed(session: Session) -> None:
    from service.models import ApiKey
    from service.tenants import service as tenants

    new = tenants.create_key(session, tenant_name="hashing")
    session.flush()
    stored = session.get(ApiKey, new.key.id)
    assert stored is not None
    assert new.secret not in (stored.key_hash, stored.prefix, stored.name)
    assert stored.key_hash == tenants.hash_key(new.secret)


def test_another_tenants_job_is_404_everywhere(client: TestClient, auth: dict[str, str], session: Session) -> None:
    job_id = client.post("/v1/jobs", json=body(), headers=auth).json()["id"]
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=other).status_code == 404
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    # ...and the owner still sees it, untouched.
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "queued"


@pytest.mark.parametrize(
    ("overrides", "status", "field", "type_"),
    [
        ({"model": "MiniMax-M9"}, 422, "model", "invalid_request"),
        ({"format": "gemini"}, 422, "format", "invalid_request"),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}},
            422,
            "params.temperature",
            "invalid_request",
        ),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "temperature": -0.1}},
            422,
            "params.temperature",
            "invalid_request",
        ),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "top_p": 1.5}},
            422,
            "params.top_p",
            "invalid_request",
        ),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}},
            422,
            "params.max_tokens",
            "invalid_request",
        ),
        ({"params": {"messages": []}}, 422, "params.messages", "invalid_request"),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "stream": True}},
            422,
            "params.stream",
            "invalid_request",
        ),
        (
            {"params": {"messages": [{"role": "user", "content": "x"}], "model": "MiniMax-M3"}},
            422,
            "params.model",
            "invalid_request",
        ),
        ({"metadata": {"k": 1}}, 422, "metadata.k", "invalid_request"),
        ({"priority": 1000}, 422, "priority", "invalid_request"),
        ({"unknown": 1}, 422, "unknown", "invalid_request"),
        (
            {
                "params": {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "what is this?"},
                                {
                                    "type": "image",
                                    "source": {"type": "url", "url": "https://example.com/a.png"},
                                },
                            ],
                        }
                    ]
                }
            },
            422,
            "params.messages[0].content[1]",
            "invalid_request",
        ),
    ],
)
def test_invalid_requests_name_the_field_and_store_nothing(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    overrides: dict[str, Any],
    status: int,
    field: str,
    type_: str,
) -> None:
    before = job_count(session)
    r = client.post("/v1/jobs", json=body(**overrides), headers=auth)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == type_
    assert error["field"] == field
    assert field in error["message"]
    assert job_count(session) == before


def test_media_is_accepted_for_m3(client: TestClient, auth: dict[str, str]) -> None:
    content = [
        {"type": "text", "text": "describe"},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    r = client.post(
        "/v1/jobs",
        json=body(model="MiniMax-M3", params={"max_tokens": 100, "messages": [{"role": "user", "content": content}]}),
        headers=auth,
    )
    assert r.status_code == 202, r.text


def test_openai_media_with_m2_names_the_part(client: TestClient, auth: dict[str, str]) -> None:
    content = [{"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}]
    r = client.post(
        "/v1/jobs",
        json=body(format="openai", params={"messages": [{"role": "user", "content": content}]}),
        headers=auth,
    )
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "params.messages[0].content[0]"


def test_over_the_context_window_gives_the_estimate(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = job_count(session)
    long_text = "lorem ipsum dolor " * 50_000  # ~900k chars, ~225k tokens: over M2.7's 204,800
    r = client.post(
        "/v1/jobs",
        json=body(params={"max_tokens": 1000, "messages": [{"role": "user", "content": long_text}]}),
        headers=auth,
    )
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["type"] == "context_window_exceeded"
    assert error["field"] == "params.messages"
    assert "estimated" in error["message"]
    assert "204,800" in error["message"]
    assert job_count(session) == before
    # The same document fits M3's 1M window.
    r = client.post(
        "/v1/jobs",
        json=body(
            model="MiniMax-M3",
            params={"max_tokens": 1000, "messages": [{"role": "user", "content": long_text}]},
        ),
        headers=auth,
    )
    assert r.status_code == 202


def test_max_tokens_plus_input_over_window(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/v1/jobs",
        json=body(params={"max_tokens": 204_800, "messages": [{"role": "user", "content": "hello"}]}),
        headers=auth,
    )
    assert r.status_code == 422
    assert "max_tokens 204,800" in r.json()["error"]["message"]


def test_malformed_json_is_400(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = job_count(session)
    r = client.post(
        "/v1/jobs",
        content=b'{"model": "MiniMax-M2.7",\n "params": {',
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_json"
    assert r.json()["error"]["message"].startswith("the body is not valid JSON at line 2, column 13: ")
    assert job_count(session) == before


def test_body_too_large_is_413(settings: Any, session_factory: Any, api_key: str) -> None:
    from service.api.app import create_app

    small = create_app(settings.model_copy(update={"max_body_bytes": 1000}))
    small.state.session_factory = session_factory
    with TestClient(small) as c:
        big = body(params={"messages": [{"role": "user", "content": "x" * 5000}]})
        r = c.post("/v1/jobs", json=big, headers={"Authorization": f"Bearer {api_key}"})
        assert r.status_code == 413
        assert r.json()["error"]["type"] == "request_too_large"

        # A chunked body with no Content-Length is counted as it arrives.
        def chunks() -> Any:
            for _ in range(10):
                yield b"x" * 500

        r = c.post(
            "/v1/jobs",
            content=chunks(),
            headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
        )
        assert r.status_code == 413


def test_list_paginates_newest_first_with_a_cursor(client: TestClient, auth: dict[str, str]) -> None:
    ids = [client.post("/v1/jobs", json=body(), headers=auth).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        pages += 1
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if not cursor:
            break
    assert pages == 3
    assert seen == list(reversed(ids))


def test_list_filters_by_status_metadata_and_created_range(client: TestClient, auth: dict[str, str]) -> None:
    a = client.post("/v1/jobs", json=body(metadata={"team": "legal", "case": "7"}), headers=auth).json()
    b = client.post("/v1/jobs", json=body(metadata={"team": "sales"}), headers=auth).json()
    client.post(f"/v1/jobs/{b['id']}/cancel", headers=auth)

    def ids(**params: Any) -> set[str]:
        r = client.get("/v1/jobs", params=params, headers=auth)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["data"]}

    assert ids(**{"metadata[team]": "legal"}) == {a["id"]}
    assert ids(**{"metadata[team]": "legal", "metadata[case]": "8"}) == set()
    assert ids(status="canceled") == {b["id"]}
    assert ids(status=["queued", "canceled"]) == {a["id"], b["id"]}
    assert ids(created_after=a["created_at"]) == {a["id"], b["id"]}
    assert ids(created_before=a["created_at"]) == set()
    assert ids(created_after="2000-01-01T00:00:00Z", created_before=b["created_at"]) == {a["id"]}


def test_list_rejects_unknown_status(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/jobs", params={"status": "done"}, headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "status"


def test_cancel_a_queued_job_then_a_second_cancel_conflicts(client: TestClient, auth: dict[str, str]) -> None:
    job_id = client.post("/v1/jobs", json=body(), headers=auth).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert r.status_code == 200
    assert r.json()["status"] == "canceled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "job_not_cancelable"


def test_unknown_job_is_404_in_the_error_shape(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/jobs/job_nope", headers=auth)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


def test_openapi_documents_the_jobs_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])


def test_a_waiting_job_says_why(client: TestClient, auth: dict[str, str], session: Session) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from service.db import utcnow

    job_id = client.post("/v1/jobs", json=body(), headers=auth).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["waiting"]["reason"] == "scheduling"
    later = utcnow() + timedelta(minutes=5)
    session.execute(update(Job).where(Job.id == job_id).values(status="retrying", next_attempt_at=later))
    session.commit()
    waiting = client.get(f"/v1/jobs/{job_id}", headers=auth).json()["waiting"]
    assert waiting["reason"] == "retry_backoff"
    assert waiting["until"].startswith(later.strftime("%Y-%m-%dT%H:%M"))
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["waiting"] is None


def test_limits_show_configured_values_with_overrides(settings: Any, session_factory: Any, api_key: str) -> None:
    from service.api.app import create_app
    from service.config import ModelRateLimit

    custom = settings.model_copy(update={"rate_limits": {"MiniMax-M2.7": ModelRateLimit(rpm=600)}})
    app = create_app(custom)
    app.state.session_factory = session_factory
    with TestClient(app) as c:
        r = c.get("/v1/limits", headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 200, r.text
    models = {m["model"]: m for m in r.json()["models"]}
    assert models["MiniMax-M2.7"]["configured"] == {"rpm": 600, "tpm": 20_000_000}
    assert models["MiniMax-M3"]["configured"] == {"rpm": 200, "tpm": 10_000_000}
    assert r.json()["tenant"]["configured"] == {"rpm": None, "tpm": None, "concurrency": None}


def test_a_nul_character_is_a_clear_422(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = job_count(session)
    r = client.post("/v1/jobs", json=body(params={"messages": [{"role": "user", "content": "a\x00b"}]}), headers=auth)
    assert r.status_code == 422
    assert "NUL" in r.json()["error"]["message"]
    assert job_count(session) == before
