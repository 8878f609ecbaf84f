"""`mmjobs job|limits|webhooks ...` (and `--json` on the other read commands) against a real API process on a
database of its own. There is no worker: submitted jobs stay queued until canceled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from service.cli import app
from tests.db import fresh_database
from tests.procs import ROOT, Proc, free_port, wait_http, wait_until
from tests.test_batch_cli import CLI_REDIS_URL, Server, one_line_error

PROMPT = ("--model", "MiniMax-M2.7", "--prompt", "Say hi")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    database_url = fresh_database("mmjobs_cli2")
    env = {"MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": CLI_REDIS_URL}
    port = free_port()
    proc = Proc("api", ["-m", "service.cli", "api", "--port", str(port)], env, tmp_path_factory.mktemp("cli2"))
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        key = operator(database_url, "keys", "create", "--tenant", "t").strip().splitlines()[-1]
        yield Server(f"http://127.0.0.1:{port}", key, database_url, proc)
    finally:
        proc.stop()


def operator(database_url: str, *args: str) -> str:
    """An operator command (it talks to the database) in its own process; its stdout."""
    env = {**os.environ, "MMJOBS_DATABASE_URL": database_url, "MMJOBS_REDIS_URL": CLI_REDIS_URL, "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run(server: Server, *args: str, key: str | None = None) -> Result:
    env = {"MMJOBS_API_URL": server.url, "MMJOBS_API_KEY": key if key is not None else server.key, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_submit_get_list_cancel(server: Server, tmp_path: Path) -> None:
    r = ok(run(server, "job", "submit", *PROMPT, "--max-tokens", "50", "--metadata", "run=cli"))
    job_id = r.stdout.strip()
    assert job_id.startswith("job_")
    assert f"submitted {job_id} (queued)" in r.stderr

    job = json.loads(ok(run(server, "job", "get", job_id, "--json")).stdout)
    assert job["id"] == job_id
    assert job["status"] == "queued"
    assert job["metadata"] == {"run": "cli"}
    shown = ok(run(server, "job", "get", job_id)).stdout
    assert job_id in shown
    assert "queued" in shown
    assert "MiniMax-M2.7 (anthropic)" in shown

    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10, "temperature": 0.5}
    (tmp_path / "params.json").write_text(json.dumps(body))
    r = ok(run(server, "job", "submit", "--model", "MiniMax-M2.7", "--params-file", str(tmp_path / "params.json"),
               "--max-tokens", "20", "--format", "openai", "--json"))  # fmt: skip
    second = json.loads(r.stdout)
    assert second["format"] == "openai"
    assert second["status"] == "queued"

    page = json.loads(ok(run(server, "job", "list", "--json")).stdout)
    assert [j["id"] for j in page["data"]][:2] == [second["id"], job_id]
    table = ok(run(server, "job", "list")).stdout
    assert job_id in table
    assert second["id"] in table

    r = ok(run(server, "job", "cancel", job_id))
    assert f"{job_id}  canceled" in r.stdout
    canceled = json.loads(ok(run(server, "job", "list", "--status", "canceled", "--json")).stdout)
    assert [j["id"] for j in canceled["data"]] == [job_id]
    assert "has already finished (canceled)" in one_line_error(run(server, "job", "cancel", job_id))
    ok(run(server, "job", "cancel", second["id"]))


def test_wait_follows_the_job_until_it_ends(server: Server) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "job", "submit", *PROMPT, "--metadata", "run=wait", "--wait",
         "--interval", "0.2"],
        env={**os.environ, "MMJOBS_API_URL": server.url, "MMJOBS_API_KEY": server.key, "COLUMNS": "200"},
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"})
    found: list[str] = []

    def submitted() -> bool:
        found[:] = [j["id"] for j in api.get("/v1/jobs").json()["data"] if j["metadata"] == {"run": "wait"}]
        return bool(found)

    wait_until(submitted, 30, "the job to be submitted")
    time.sleep(0.5)  # let it poll a few times
    assert follower.poll() is None, "--wait returned while the job was queued"
    api.post(f"/v1/jobs/{found[0]}/cancel").raise_for_status()
    stdout, stderr = follower.communicate(timeout=30)
    assert follower.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"submitted {found[0]} (queued)" in stderr
    assert f"{found[0]} canceled: 0 input + 0 output tokens" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: canceled")
    assert stdout == ""


def test_limits_and_webhooks(server: Server) -> None:
    table = ok(run(server, "limits")).stdout
    assert "MiniMax-M2.7 " in table
    assert "500" in table
    assert "tenant t: rpm no cap, tpm no cap, concurrency no cap" in table
    limits = json.loads(ok(run(server, "limits", "--json")).stdout)
    m27 = next(m for m in limits["models"] if m["model"] == "MiniMax-M2.7")
    assert m27["configured"]["rpm"] == 500

    endpoints = json.loads(ok(run(server, "webhooks", "endpoints", "--json")).stdout)
    assert endpoints["data"] == []
    assert "no webhook endpoints" in ok(run(server, "webhooks", "endpoints")).stderr
    deliveries = json.loads(ok(run(server, "webhooks", "deliveries", "--status", "failed", "--json")).stdout)
    assert deliveries == {"object": "list", "data": [], "has_more": False, "next_cursor": None}
    assert "event" in ok(run(server, "webhooks", "deliveries")).stdout
    message = one_line_error(run(server, "webhooks", "redeliver", "whd_nope"))
    assert "'whd_nope' was not found" in message
    assert "mmjobs webhooks deliveries" in message


def test_json_on_the_other_read_commands(server: Server) -> None:
    keys = json.loads(operator(server.database_url, "keys", "list", "--json"))
    assert [k["tenant"] for k in keys] == ["t"]
    assert keys[0]["revoked_at"] is None
    assert json.loads(operator(server.database_url, "usage", "--json")) == []
    schedules = json.loads(ok(run(server, "schedules", "list", "--json")).stdout)
    assert schedules["data"] == []


def test_errors_are_one_line_that_says_the_fix(server: Server, tmp_path: Path) -> None:
    message = one_line_error(run(server, "job", "get", "job_nope"))
    assert "'job_nope' was not found" in message
    assert "see `mmjobs job list`" in message
    commands: list[tuple[str, ...]] = [("job", "list"), ("limits",), ("webhooks", "endpoints")]
    for command in commands:
        message = one_line_error(run(server, *command, key="mmj_wrong"))
        assert "invalid or revoked API key" in message
        assert "--api-key or MMJOBS_API_KEY" in message
    assert "no API key: pass --api-key" in one_line_error(run(server, "job", "list", key=""))
    assert "unknown model" in one_line_error(run(server, "job", "submit", "--model", "MiniMax-X", "--prompt", "hi"))
    message = one_line_error(run(server, "job", "submit", "--model", "MiniMax-M2.7"))
    assert "give exactly one of --prompt TEXT or --params-file" in message
    (tmp_path / "bad.json").write_text("{nope")
    message = one_line_error(run(server, "job", "submit", "--model", "M", "--params-file", str(tmp_path / "bad.json")))
    assert f"--params-file: {tmp_path / 'bad.json'}, line 1, column 2: not valid JSON" in message
    url = f"http://127.0.0.1:{free_port()}"
    for command in [("job", "get", "job_x"), ("limits",), ("webhooks", "deliveries")]:
        message = one_line_error(CliRunner().invoke(app, [*command, "--api-url", url], env={"MMJOBS_API_KEY": "k"}))
        assert message == (
            f"error: cannot reach the API at {url}: is `mmjobs up` (or `mmjobs api`) running? "
            "Point elsewhere with --api-url or MMJOBS_API_URL"
        )


def test_wait_prints_the_answer_and_get_shows_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The finished-job paths, on canned API answers (there is no worker here to finish a job)."""
    from service.cli.batch import Api

    usage = {
        "input_tokens": 12,
        "output_tokens": 3,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": "0.01",
    }
    attempt = {"number": 1, "started_at": "2026-01-01T00:00:00Z", "ended_at": None, "duration_ms": 840,
               "http_status": 529, "minimax_code": None, "classification": "overloaded", "error_type": None,
               "error_message": "busy", "upstream_request_id": None, "usage": usage}  # fmt: skip
    base = {"id": "job_1", "model": "MiniMax-M2.7", "format": "anthropic", "created_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:09Z", "attempt_count": 2, "max_attempts": 5, "usage": usage,
            "error": None, "waiting": None, "attempts": [attempt], "result": {"text": "Hi there."}}  # fmt: skip
    answers = iter([
        {**base, "status": "queued", "progress": {"output_tokens_so_far": 0}},
        {**base, "status": "running", "progress": {"output_tokens_so_far": 2}},
        {**base, "status": "succeeded", "progress": {"output_tokens_so_far": 3}},
        {**base, "status": "succeeded"},
    ])  # fmt: skip
    monkeypatch.setattr(Api, "call", lambda self, method, path, **kwargs: next(answers))
    env = {"MMJOBS_API_KEY": "k", "COLUMNS": "200"}
    r = ok(CliRunner().invoke(app, ["job", "submit", *PROMPT, "--wait", "--interval", "0"], env=env))
    assert r.stdout == "Hi there.\n"
    assert "job_1 succeeded: 12 input + 3 output tokens, $0.010000" in r.stderr
    shown = ok(CliRunner().invoke(app, ["job", "get", "job_1"], env=env)).stdout
    assert "attempt 1" in shown
    assert "HTTP 529  overloaded  busy" in shown
    assert shown.endswith("Hi there.\n")
