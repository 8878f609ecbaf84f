"""`mmjobs batch ...` against a real API process on a database of its own (no worker: batches are canceled to
give them results)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from docx import Document
from sqlalchemy import select
from typer.testing import CliRunner, Result

from service.cli import app
from service.db import make_engine
from service.models import Job
from tests.db import fresh_database, redis_url
from tests.procs import ROOT, Proc, free_port, wait_http, wait_until

CLI_REDIS_URL = redis_url(9)


@dataclass(frozen=True)
class Server:
    url: str
    key: str
    database_url: str
    proc: Proc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database_url = fresh_database("mmjobs_cli")
    env = {"MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": CLI_REDIS_URL}
    port = free_port()
    proc = Proc("api", ["-m", "service.cli", "api", "--port", str(port)], env, tmp_path_factory.mktemp("cli"))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        created = subprocess.run(
            [sys.executable, "-m", "service.cli", "keys", "create", "--tenant", "t"],
            env={**os.environ, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        yield Server(f"http://127.0.0.1:{port}", created.stdout.strip().splitlines()[-1], database_url, proc)
    finally:
        proc.stop()


def run(server: Server, *args: str, key: str | None = None) -> Result:
    env = {"MMJOBS_API_URL": server.url, "MMJOBS_API_KEY": key if key is not None else server.key, "COLUMNS": "200"}
    return CliRunner().invoke(app, ["batch", *args], env=env)


def docx_bytes(text: str) -> bytes:
    doc = Document()
    doc.add_paragraph(text)
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


def stored_jobs(server: Server, batch_id: str) -> dict[str, Any]:
    """custom_id -> params, as stored by the API process."""
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Job.custom_id, Job.params).where(Job.batch_id == batch_id)).all()
    finally:
        engine.dispose()
    return {str(r.custom_id): r.params for r in rows}


def test_submit_documents_then_get_list_cancel_watch_and_results(server: Server, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("Plain notes.")
    (tmp_path / "readme.md").write_text("# Title\n\nBody.")
    (tmp_path / "page.html").write_text("<p>Hello page</p><script>nope()</script>")
    (tmp_path / "memo.docx").write_bytes(docx_bytes("The memo says yes."))
    (tmp_path / "r\u00e9sum\u00e9.txt").write_text("My CV.")
    files = sorted(str(p) for p in tmp_path.iterdir())
    r = run(
        server,
        "submit",
        *files,
        "--prompt",
        "Summarize {filename}: {document}",
        "--model",
        "MiniMax-M2.7",
        "--param",
        "max_tokens=100",
        "--param",
        "temperature=0.5",
        "--metadata",
        "run=cli",
    )
    assert r.exit_code == 0, r.output
    batch_id = r.stdout.strip().splitlines()[-1]
    assert batch_id.startswith("batch_")
    assert f"submitted {batch_id}: 5 requests" in r.stderr

    jobs = stored_jobs(server, batch_id)
    assert set(jobs) == {"notes", "readme", "page", "memo", "resume"}
    assert jobs["memo"]["messages"][0]["content"] == "Summarize memo.docx: The memo says yes."
    assert jobs["resume"]["messages"][0]["content"] == "Summarize r\u00e9sum\u00e9.txt: My CV."
    assert jobs["page"]["messages"][0]["content"] == "Summarize page.html: Hello page"
    assert jobs["notes"]["max_tokens"] == 100
    assert jobs["notes"]["temperature"] == 0.5

    r = run(server, "get", batch_id, "--json")
    assert r.exit_code == 0, r.output
    batch = json.loads(r.stdout)
    assert batch["request_total"] == 5
    assert batch["metadata"] == {"run": "cli"}
    r = run(server, "get", batch_id)
    assert batch_id in r.stdout
    assert "in_progress" in r.stdout
    listed = json.loads(run(server, "list", "--json").stdout)
    assert batch_id in [b["id"] for b in listed["data"]]
    assert batch_id in run(server, "list").stdout

    r = run(server, "cancel", batch_id)
    assert r.exit_code == 0, r.output
    assert "ended" in r.stdout
    assert "canceled 5" in r.stdout
    r = run(server, "watch", batch_id, "--interval", "0.1")
    assert r.exit_code == 0, r.output
    assert "canceled 5" in r.stdout
    assert f"mmjobs batch results {batch_id}" in r.stderr

    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    r = run(server, "results", batch_id, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert f"5 lines written to {out}" in r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(jobs)
    assert {x["result"]["type"] for x in lines} == {"canceled"}
    assert not (out.parent / "results.jsonl.part").exists()
    empty = tmp_path / "out" / "succeeded.jsonl"
    r = run(server, "results", batch_id, "-o", str(empty), "--status", "succeeded")
    assert r.exit_code == 0, r.output
    assert "0 lines" in r.stderr
    assert empty.read_text() == ""


def test_a_jsonl_file_is_sent_as_requests(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [
        {"custom_id": f"r{i}", "model": "MiniMax-M2.7", "params": {"messages": [{"role": "user", "content": "hi"}]}}
        for i in range(3)
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    r = run(server, "submit", str(path), "--metadata", "src=jsonl", "--completion-window", "2h")
    assert r.exit_code == 0, r.output
    batch = json.loads(run(server, "get", r.stdout.strip(), "--json").stdout)
    assert batch["request_total"] == 3
    assert batch["metadata"] == {"src": "jsonl"}
    assert set(stored_jobs(server, batch["id"])) == {"r0", "r1", "r2"}


def test_ctrl_c_stops_watching_cleanly(server: Server, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text")
    r = run(server, "submit", str(tmp_path / "a.txt"), "--prompt", "{document}", "--model", "MiniMax-M2.7")
    batch_id = r.stdout.strip()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "batch", "watch", batch_id, "--interval", "0.2"],
        env={**os.environ, "MMJOBS_API_URL": server.url, "MMJOBS_API_KEY": server.key},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt once it is polling (the API logs its requests) a batch that never ends: there is no worker.
    wait_until(lambda: server.proc.log().count(f'"path": "/v1/batches/{batch_id}"') >= 2, 30, "the watcher to poll")
    assert watcher.poll() is None
    watcher.send_signal(signal.SIGINT)
    _, stderr = watcher.communicate(timeout=30)
    assert watcher.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert f"stopped watching; {batch_id} keeps running" in stderr
    assert run(server, "get", batch_id, "--json").stdout.count('"in_progress"') == 1


def one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_errors_are_one_line_that_says_the_fix(server: Server, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.txt", tmp_path / "tool.exe"
    good.write_text("fine")
    bad.write_bytes(b"MZ")
    args = ("--prompt", "{document}", "--model", "MiniMax-M2.7")
    message = one_line_error(run(server, "submit", str(good), str(bad), *args))
    assert "files[1] (\"tool.exe\"): '.exe' files are not supported" in message
    message = one_line_error(run(server, "submit", str(good), "--prompt", "{document}", "--model", "MiniMax-X"))
    assert "unknown model" in message
    assert "documents need --prompt" in one_line_error(run(server, "submit", str(good), "--model", "MiniMax-M2.7"))
    assert "--param 'x'" in one_line_error(run(server, "submit", str(good), *args, "--param", "x"))
    assert "no such file" in one_line_error(run(server, "submit", str(tmp_path / "missing.txt"), *args))
    message = one_line_error(run(server, "get", "batch_nope"))
    assert "'batch_nope' was not found" in message
    assert "mmjobs batch list" in message
    message = one_line_error(run(server, "list", key="mmj_wrong"))
    assert "invalid or revoked API key" in message
    assert "--api-key" in message
    assert "no API key: pass --api-key or set MMJOBS_API_KEY" in one_line_error(run(server, "list", key=""))


def test_an_unreachable_api_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "batch", "list", "--api-url", url],
        env={**os.environ, "MMJOBS_API_KEY": "mmj_any", "COLUMNS": "200"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: cannot reach the API at {url}: is `mmjobs up` (or `mmjobs api`) running? "
        "Point elsewhere with --api-url or MMJOBS_API_URL"
    )


def test_submit_a_directory_gives_its_documents(server: Server, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "nested").mkdir(parents=True)
    (docs / "b-notes.txt").write_text("Second.")
    (docs / "a-report.md").write_text("# First")
    (docs / ".hidden.txt").write_text("not a document of the batch")
    (docs / "image.bin").write_bytes(b"\x00\x01")
    (docs / "nested" / "deeper.txt").write_text("not looked into")
    r = run(server, "submit", str(docs), "--prompt", "Summarize: {document}", "--model", "MiniMax-M2.7")
    assert r.exit_code == 0, r.output
    assert f"{docs}: 2 documents" in r.stderr
    batch_id = r.stdout.strip().splitlines()[-1]
    assert set(stored_jobs(server, batch_id)) == {"a-report", "b-notes"}

    empty = tmp_path / "empty"
    empty.mkdir()
    r = run(server, "submit", str(empty), "--prompt", "{document}", "--model", "MiniMax-M2.7")
    assert r.exit_code == 1
    assert f"no documents in {empty}" in " ".join(r.stderr.split())


def test_tables_show_whole_ids_at_80_columns(server: Server, tmp_path: Path) -> None:
    (tmp_path / "one.txt").write_text("One.")
    (tmp_path / "two.txt").write_text("Two.")
    r = run(server, "submit", str(tmp_path), "--prompt", "{document}", "--model", "MiniMax-M2.7")
    batch_id = r.stdout.strip().splitlines()[-1]
    job_ids = sorted(stored_jobs_ids(server, batch_id))
    env = {"MMJOBS_API_URL": server.url, "MMJOBS_API_KEY": server.key, "COLUMNS": "80"}
    listed = CliRunner().invoke(app, ["job", "list", "--batch-id", batch_id], env=env)
    assert listed.exit_code == 0, listed.output
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    for job_id in job_ids:
        assert job_id in listed.stdout  # whole, on one line: other columns fold instead
    keys = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "list", "--tenant", "t"],
        env={**os.environ, "MMJOBS_DATABASE_URL": server.database_url, "COLUMNS": "80"},
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    key_id = json.loads(
        subprocess.run(
            [sys.executable, "-m", "service.cli", "keys", "list", "--tenant", "t", "--json"],
            env={**os.environ, "MMJOBS_DATABASE_URL": server.database_url},
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    )[0]["id"]  # fmt: skip
    assert max(len(line) for line in keys.stdout.splitlines()) <= 80
    assert key_id in keys.stdout


def stored_jobs_ids(server: Server, batch_id: str) -> list[str]:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return [str(i) for i in conn.execute(select(Job.id).where(Job.batch_id == batch_id)).scalars()]
    finally:
        engine.dispose()


def test_a_broken_jsonl_line_is_named_with_its_line_and_column(server: Server, tmp_path: Path) -> None:
    good = {
        "custom_id": "a",
        "model": "MiniMax-M2.7",
        "params": {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
    }
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"custom_id": "b", "model": }\n')
    r = run(server, "submit", str(path))
    assert r.exit_code == 1
    assert "line 2, column 29: not valid JSON (Expecting value)" in " ".join(r.stderr.split())
