"""`mmjobs tenants key ...` in its own process: refuses without MMJOBS_SECRET_KEY, stores the key from stdin
encrypted, shows only its fingerprint, names a bad option, and removes it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.procs import ROOT

NAME = f"mmjobs_tenant_key_cli_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
KEY = "sk-cli-own-key-9zx1"


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    url = fresh_database(NAME)
    try:
        yield url
    finally:
        drop_database(NAME)


def mmjobs(database: str, *args: str, secret: str | None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MMJOBS_DATABASE_URL": database, "MMJOBS_REDIS_URL": TEST_REDIS_URL, "COLUMNS": "200"}
    env.pop("MMJOBS_SECRET_KEY", None)
    if secret:
        env["MMJOBS_SECRET_KEY"] = secret
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin,
    )  # fmt: skip


def test_tenant_key_commands(database: str) -> None:
    secret = Fernet.generate_key().decode()
    assert mmjobs(database, "keys", "create", "--tenant", "acme", secret=None).returncode == 0
    refused = mmjobs(database, "tenants", "key", "set", "acme", secret=None, stdin=KEY + "\n")
    assert refused.returncode == 1
    assert "MMJOBS_SECRET_KEY" in refused.stderr
    bad = mmjobs(database, "tenants", "key", "set", "acme", "--base-url", "https://evil.example", secret=secret,
                 stdin=KEY + "\n")  # fmt: skip
    assert bad.returncode == 1
    assert "--base-url" in bad.stderr
    done = mmjobs(database, "tenants", "key", "set", "acme", "--rate-limits", '{"MiniMax-M2.7": {"rpm": 60}}',
                  secret=secret, stdin=KEY + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout
    assert "..." + KEY[-4:] in done.stdout
    shown = mmjobs(database, "tenants", "key", "show", "acme", secret=secret)
    assert KEY not in shown.stdout
    assert '"rpm": 60' in shown.stdout
    engine = create_engine(database)
    with engine.connect() as conn:
        raw = bytes(conn.execute(text("SELECT encrypted_key FROM tenant_upstream_keys")).scalar_one())
    engine.dispose()
    assert KEY.encode() not in raw
    assert Fernet(secret.encode()).decrypt(raw).decode() == KEY
    removed = mmjobs(database, "tenants", "key", "remove", "acme", secret=secret)
    assert "own key removed" in removed.stdout
