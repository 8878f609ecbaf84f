"""Postgres and Redis for a test run on a machine that has none (issue 16: `make test` needs nothing installed).

Where MMJOBS_TEST_DATABASE_URL / MMJOBS_TEST_REDIS_URL are set, they are used as they are. Otherwise, where the
machine's own server answers at 127.0.0.1:5432 / :6379 (CI's machine), that one. Otherwise the servers the
`embedded` extra brings (the same ones `mmjobs up` starts) are started for this run, their data in a temporary
directory of its own (two runs side by side never share one), and the variables set so every process the tests
start finds them; they stop, and their data goes, when the run ends.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379"


def ensure_servers() -> None:
    """Fill in MMJOBS_TEST_DATABASE_URL / MMJOBS_TEST_REDIS_URL, starting embedded servers where nothing answers."""
    from service import embedded

    need_database = "MMJOBS_TEST_DATABASE_URL" not in os.environ and not embedded.postgres_answers(DEFAULT_DATABASE)
    need_redis = "MMJOBS_TEST_REDIS_URL" not in os.environ and not embedded.redis_answers(DEFAULT_REDIS + "/0")
    if not (need_database or need_redis):
        return
    quiet = Console(file=io.StringIO())
    data = Path(tempfile.mkdtemp(prefix="mmjobs-test-servers-"))
    stack = embedded.Stack(logs_dir=data, console=quiet, stall_seconds=120)

    def stop() -> None:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)

    atexit.register(stop)
    status = quiet.status("")
    try:
        if need_database:
            url = embedded.start_postgres(stack, data / "postgres", embedded.free_port(None), status)
            os.environ["MMJOBS_TEST_DATABASE_URL"] = url.replace("/mmjobs", "/postgres")
        if need_redis:
            url = embedded.start_valkey(stack, data / "valkey", embedded.free_port(None), status)
            os.environ["MMJOBS_TEST_REDIS_URL"] = url.rsplit("/", 1)[0]
    except embedded.StartupError as exc:
        tail = "\n".join(exc.tail)
        raise RuntimeError(f"test servers: {exc.message}\n{tail}") from None
