"""Links in responses never come from the Host header (issue 14.6): with a hostile `Host: evil.example` on every
response that carries a link, the links are paths (MMJOBS_PUBLIC_BASE_URL unset), or under the configured public
base URL; the Anthropic drop-in's results_url, which its SDK needs absolute, uses the address the connection
arrived on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.models import Job
from tests.reading import land

MODEL = "MiniMax-M2.7"
EVIL = {"Host": "evil.example", "X-Forwarded-Host": "evil.example", "Forwarded": "host=evil.example"}
JOB: dict[str, Any] = {"model": MODEL, "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}}
ANTHROPIC = "/anthropic/v1/messages/batches"


def batch_body(n: int = 2) -> dict[str, Any]:
    return {"requests": [{"custom_id": f"r{i}", **JOB} for i in range(n)]}


def end_batch(session: Session, batch_id: str) -> None:
    land(session, Job.batch_id == batch_id, "canceled")


def every_linked_response(client: TestClient, api_key: str, session: Session) -> Iterator[tuple[str, Any]]:
    """(what, JSON) for each response that carries a link, each asked with the hostile Host header."""
    auth = {"Authorization": f"Bearer {api_key}"} | EVIL
    job = client.post("/v1/jobs", json=JOB, headers=auth)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    yield "POST /v1/jobs", job.json()
    yield "GET /v1/jobs/{id}", client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    yield "GET /v1/jobs", client.get("/v1/jobs", headers=auth).json()
    yield "POST /v1/jobs/{id}/cancel", client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).json()
    batch = client.post("/v1/batches", json=batch_body(), headers=auth)
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]
    yield "POST /v1/batches", batch.json()
    yield "GET /v1/batches/{id}", client.get(f"/v1/batches/{batch_id}", headers=auth).json()
    yield "GET /v1/batches", client.get("/v1/batches", headers=auth).json()
    yield "POST /v1/batches/{id}/cancel", client.post(f"/v1/batches/{batch_id}/cancel", headers=auth).json()
    documents = client.post(
        "/v1/batches/documents",
        files=[("files", ("a.txt", b"some text", "text/plain"))],
        data={"model": MODEL, "prompt": "Summarize:\n\n{document}"},
        headers=auth,
    )
    assert documents.status_code == 202, documents.text
    yield "POST /v1/batches/documents", documents.json()
    x_api_key = {"x-api-key": api_key} | EVIL
    body = {"requests": [{"custom_id": "m0", "params": {"model": MODEL, **JOB["params"]}}]}
    message_batch = client.post(ANTHROPIC, json=body, headers=x_api_key)
    assert message_batch.status_code == 200, message_batch.text
    end_batch(session, message_batch.json()["id"])
    yield f"GET {ANTHROPIC}/{{id}}", client.get(f"{ANTHROPIC}/{message_batch.json()['id']}", headers=x_api_key).json()
    yield f"GET {ANTHROPIC}", client.get(ANTHROPIC, headers=x_api_key).json()


def links(data: Any) -> list[str]:
    """Every link in a response body: links.self, links.cancel, results_url, in any list."""
    found: list[str] = []
    if isinstance(data, dict):
        for name, value in data.items():
            if name in ("self", "cancel", "results_url") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(links(value))
    elif isinstance(data, list):
        for value in data:
            found.extend(links(value))
    return found


def app_with(settings: Settings, session_factory: sessionmaker[Session], **update: Any) -> TestClient:
    app = create_app(settings.model_copy(update=update))
    app.state.session_factory = session_factory
    return TestClient(app)


def test_without_a_public_base_url_links_are_paths(
    settings: Settings, session_factory: sessionmaker[Session], api_key: str, session: Session
) -> None:
    with app_with(settings, session_factory) as client:
        seen = 0
        for what, body in every_linked_response(client, api_key, session):
            assert "evil.example" not in str(body), what
            found = links(body)
            assert found, f"{what}: no link in {body}"
            for url in found:
                if "/anthropic/" in url:
                    # The test client's connection arrives at "testserver" (port 80): the socket, not the header.
                    assert url.startswith("http://testserver/anthropic/v1/messages/batches/msgbatch_"), (what, url)
                else:
                    assert url.startswith("/v1/"), (what, url)
                seen += 1
    assert seen >= 12


def test_with_a_public_base_url_links_are_under_it(
    settings: Settings, session_factory: sessionmaker[Session], api_key: str, session: Session
) -> None:
    base = "https://jobs.example.com/api"
    with app_with(settings, session_factory, public_base_url=base + "/") as client:
        for what, body in every_linked_response(client, api_key, session):
            assert "evil.example" not in str(body), what
            found = links(body)
            assert found, what
            for url in found:
                assert url.startswith(base + "/v1/") or url.startswith(base + "/anthropic/v1/"), (what, url)


@pytest.mark.parametrize("value", ["jobs.example.com", "ftp://jobs.example.com", "https://", "https://h/?q=1"])
def test_a_public_base_url_that_is_not_a_base_url_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="public_base_url"):
        Settings(public_base_url=value)
