"""Security suite fixtures: a committed database of its own for the fuzzer, two tenants' keys on it."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from service import netguard
from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database

# Per test process: two runs side by side (the lead and a helper) must not drop each other's database.
FUZZ_DATABASE = f"mmjobs_fuzz_{os.getpid()}"


@pytest.fixture(scope="session")
def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    url = fresh_database(FUZZ_DATABASE)
    files = Path(tmp_path_factory.mktemp("fuzz-files"))
    yield Settings(
        database_url=url,
        redis_url=TEST_REDIS_URL,
        minimax_api_key=None,
        files_dir=str(files),
        db_pool_size=2,
        db_max_overflow=2,
        # One key drives every operation: the intake request rates (issue 14.3) would answer most cases 429.
        requests_per_minute=0,
        key_requests_per_minute=0,
        # Tenants' own keys can be stored, so their route's body is read and judged (without it: 403 for any body).
        secret_key=Fernet.generate_key().decode(),
    )
    drop_database(FUZZ_DATABASE)


@pytest.fixture(scope="session")
def fuzz_session_factory(fuzz_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(fuzz_settings.database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="session")
def fuzz_key(fuzz_session_factory: sessionmaker[Session]) -> str:
    with transaction(fuzz_session_factory) as session:
        return tenants.create_key(session, tenant_name="fuzz").secret


@pytest.fixture(scope="session")
def fuzz_app(fuzz_settings: Settings) -> Iterator[FastAPI]:
    app = create_app(fuzz_settings)
    yield app
    app.state.engine.dispose()


@pytest.fixture(scope="session")
def fake_dns() -> Iterator[None]:
    """Every name resolves to one public address, so webhook URLs pass the guard without asking the real DNS (slow
    or absent here). Literal addresses and plainly internal names are still refused by the rules themselves."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(netguard, "resolve", lambda host, port: [ipaddress.ip_address("93.184.216.34")])
        yield
