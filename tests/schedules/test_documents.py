"""Document sources: a directory the operator allows, read anew at every run, one request per file; nothing
outside the allowed directories, whether named directly or reached through a symlink."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.models import Job

URL = "/v1/schedules"


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "allowed"
    (root / "reports").mkdir(parents=True)
    return root


@pytest.fixture
def docs_client(settings: Settings, session_factory: sessionmaker[Session], allowed: Path) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"schedule_source_dirs": [str(allowed)]}))
    app.state.session_factory = session_factory
    with TestClient(app) as client:
        yield client


def documents(directory: Path | str, **extra: Any) -> dict[str, Any]:
    source = {
        "directory": str(directory),
        "model": "MiniMax-M2.7",
        "prompt": "Summarize {filename}: {document}",
        "params": {"max_tokens": 64},
        **extra,
    }
    return {"name": "reports", "cron": "@daily", "template": {"documents": source}}


def test_each_run_reads_the_directory_again(
    docs_client: TestClient, auth: dict[str, str], allowed: Path, session: Session, tmp_path: Path
) -> None:
    reports = allowed / "reports"
    (reports / "q1.txt").write_text("first quarter")
    (reports / "notes.md").write_text("# notes")
    (reports / ".hidden.txt").write_text("skipped")
    (reports / "image.bin").write_bytes(b"\x00\x01")  # not a type we read: left out
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the allowed directory")
    (reports / "link.txt").symlink_to(outside)  # leads outside: left out
    r = docs_client.post(URL, json=documents(reports, metadata={"team": "finance"}), headers=auth)
    assert r.status_code == 201, r.text
    schedule_id = r.json()["id"]
    run = docs_client.post(f"{URL}/{schedule_id}/trigger", headers=auth).json()
    assert run["batch_id"]
    assert run["request_counts"]["processing"] == 2
    rows = session.execute(select(Job.custom_id, Job.params).where(Job.batch_id == run["batch_id"])).all()
    assert sorted(c for c, _ in rows) == ["notes", "q1"]
    params = {c: p for c, p in rows}
    assert params["q1"]["messages"] == [{"role": "user", "content": "Summarize q1.txt: first quarter"}]
    assert params["q1"]["max_tokens"] == 64
    batch = docs_client.get(f"/v1/batches/{run['batch_id']}", headers=auth).json()
    assert batch["metadata"] == {"team": "finance", "schedule_id": schedule_id}
    (reports / "q2.txt").write_text("second quarter")
    again = docs_client.post(f"{URL}/{schedule_id}/trigger", headers=auth).json()
    assert again["request_counts"]["processing"] == 3


def test_a_directory_outside_the_allowed_ones_is_refused(
    docs_client: TestClient, auth: dict[str, str], allowed: Path, tmp_path: Path
) -> None:
    escape = allowed / "escape"
    escape.symlink_to(tmp_path)
    cases: list[tuple[Path | str, str]] = [
        (tmp_path, "not inside a directory this server allows"),
        (allowed / ".." / "allowed" / "..", "not inside"),
        (escape, "not inside"),
        ("reports", "absolute path"),
        (allowed / "missing", "not a directory"),
    ]
    for directory, says in cases:
        r = docs_client.post(URL, json=documents(directory), headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "template.documents.directory"
        assert says in r.json()["error"]["message"]
    bad = docs_client.post(URL, json=documents(allowed, pattern="../*.txt"), headers=auth)
    assert bad.json()["error"]["field"] == "template.documents.pattern"
    bad = docs_client.post(URL, json=documents(allowed, params={"messages": []}), headers=auth)
    assert bad.json()["error"]["field"] == "template.documents.params.messages"


def test_a_run_with_no_files_fails_with_the_reason(
    docs_client: TestClient, auth: dict[str, str], allowed: Path
) -> None:
    r = docs_client.post(URL, json=documents(allowed / "reports", pattern="*.pdf"), headers=auth)
    assert r.status_code == 201, r.text
    trigger = docs_client.post(f"{URL}/{r.json()['id']}/trigger", headers=auth)
    assert trigger.status_code == 422
    assert trigger.json()["error"]["type"] == "source_empty"
    assert "*.pdf" in trigger.json()["error"]["message"]
