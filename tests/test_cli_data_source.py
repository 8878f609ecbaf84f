"""Every command finds the data `mmjobs up` uses, and a known condition is one line, never a traceback (16.3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.config import DEFAULT_DATABASE_URL, Settings
from tests.procs import ROOT, free_port


def _mmjobs(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MMJOBS_", "MINIMAX_"))}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**clean, "COLUMNS": "200", "PYTHONPATH": str(ROOT), **env},
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_settings_take_the_urls_a_local_up_recorded_unless_configured(tmp_path: Path) -> None:
    (tmp_path / "up.json").write_text(
        json.dumps(
            {"database_url": "postgresql+psycopg://postgres@127.0.0.1:5999/mmjobs", "redis_url": "redis://x:1/0"}
        )
    )
    local = Settings(data_dir=str(tmp_path))
    assert local.database_url == "postgresql+psycopg://postgres@127.0.0.1:5999/mmjobs"
    assert local.redis_url == "redis://x:1/0"
    assert not local.configured("database_url")
    given = Settings(data_dir=str(tmp_path), database_url="postgresql://a@b/c")
    assert given.database_url == "postgresql+psycopg://a@b/c"
    assert given.configured("database_url")
    assert Settings(data_dir=str(tmp_path / "none")).database_url == DEFAULT_DATABASE_URL


def test_an_unreachable_database_is_one_line_naming_it_and_what_to_do(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/mmjobs"
    for command in (["keys", "list"], ["keys", "create", "--tenant", "t"], ["usage"], ["migrate"]):
        done = _mmjobs(*command, cwd=tmp_path, MMJOBS_DATABASE_URL=url)
        said = " ".join(done.stderr.split())
        assert done.returncode == 1, (command, said)
        assert "Traceback" not in done.stderr + done.stdout
        assert said.startswith(f"error: cannot use the database at {url}: connection failed"), said
        assert "Start Postgres, or point MMJOBS_DATABASE_URL at one" in said


def test_after_up_the_admin_commands_point_at_its_database(tmp_path: Path) -> None:
    """up.json left by a `mmjobs up` that is no longer running: the same database, and the fix is to start it."""
    port = free_port()
    (tmp_path / ".mmjobs").mkdir()
    (tmp_path / ".mmjobs" / "up.json").write_text(
        json.dumps(
            {
                "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{port}/mmjobs",
                "redis_url": "redis://127.0.0.1:1/0",
            }
        )
    )
    done = _mmjobs("keys", "list", cwd=tmp_path)
    said = " ".join(done.stderr.split())
    assert done.returncode == 1
    assert f"cannot use the database at postgresql+psycopg://postgres@127.0.0.1:{port}/mmjobs" in said
    assert "It is the database `mmjobs up` used here (.mmjobs/up.json): start `mmjobs up` (or `make up`)" in said


def test_an_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    done = _mmjobs("keys", "list", cwd=tmp_path, MMJOBS_API_PORT="eighty")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert said.startswith("error: invalid settings: MMJOBS_API_PORT: Input should be a valid integer")
    done = _mmjobs("keys", "list", cwd=tmp_path, MMJOBS_DATABASE_URL="sqlite:///x.db")
    assert "MMJOBS_DATABASE_URL: Value error, 'sqlite' is not supported" in " ".join(done.stderr.split())
