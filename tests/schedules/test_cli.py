"""`mmjobs schedules ...` against a real API server (in a thread, on a database of its own)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from service.cli import app
from tests.schedules.conftest import JOB
from tests.schedules.live import Live, live_server


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with live_server(f"mmjobs_sched_cli_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}") as server:
        yield server


def run(live: Live, *args: str, key: str | None = None) -> Result:
    env = {"MMJOBS_API_URL": live.url, "MMJOBS_API_KEY": live.key if key is None else key, "COLUMNS": "250"}
    return CliRunner().invoke(app, ["schedules", *args], env=env)


def test_create_list_trigger_pause_resume_delete(live: Live, tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(JOB))
    created = run(live, "create", "--name", "morning", "--cron", "0 7 * * *", "--timezone", "Asia/Tokyo",
                  "--job", str(job), "--overlap", "allow")  # fmt: skip
    assert created.exit_code == 0, created.output
    schedule_id = created.stdout.strip().splitlines()[-1]
    assert schedule_id.startswith("sch_")
    listed = run(live, "list")
    assert listed.exit_code == 0
    assert schedule_id in listed.stdout
    assert "Asia/Tokyo" in listed.stdout
    triggered = run(live, "trigger", schedule_id)
    assert triggered.exit_code == 0, triggered.output
    assert triggered.stdout.strip().splitlines()[-1].startswith("job_")
    assert "queued" in run(live, "list").stdout  # the latest run's outcome
    assert run(live, "pause", schedule_id).exit_code == 0
    assert "paused" in run(live, "list").stdout
    shown = json.loads(run(live, "show", schedule_id).stdout)
    assert shown["enabled"] is False
    assert shown["overlap"] == "allow"
    assert len(shown["latest_runs"]) == 1
    assert run(live, "resume", schedule_id).exit_code == 0
    assert run(live, "delete", schedule_id).exit_code == 0
    assert schedule_id not in run(live, "list").stdout


def test_batch_file_as_jsonl(live: Live, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps({"custom_id": f"r{i}", **JOB}) for i in range(2)) + "\n")
    created = run(live, "create", "--name", "batch", "--cron", "@weekly", "--batch", str(requests), "--paused")
    assert created.exit_code == 0, created.output
    schedule_id = created.stdout.strip().splitlines()[-1]
    triggered = run(live, "trigger", schedule_id)
    assert triggered.exit_code == 0, triggered.output
    assert triggered.stdout.strip().startswith("batch_")


def test_errors_are_one_line_and_exit_1(live: Live, tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps(JOB))
    bad_cron = run(live, "create", "--name", "x", "--cron", "0 7 * *", "--job", str(job))
    assert bad_cron.exit_code == 1
    assert "5 fields" in bad_cron.output
    no_template = run(live, "create", "--name", "x", "--cron", "@daily")
    assert no_template.exit_code == 1
    assert "exactly one of --job" in no_template.output
    missing = run(live, "pause", "sch_nope")
    assert missing.exit_code == 1
    assert "was not found" in missing.output
    assert "schedules list" in missing.output
    assert run(live, "list", key="mmj_wrong").exit_code == 1
