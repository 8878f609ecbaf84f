"""Shared fixtures: a real Postgres database built by the migrations, a real Redis, each test rolled back."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine
from service.tenants import service as tenants
from tests.db import fresh_database, redis_url

TEST_REDIS_URL = redis_url(15)

# A suite started in the background by a non-interactive shell (`make test &`, `nohup ... &`) inherits SIGINT
# ignored, and exec passes an ignored signal on to every process the tests start: the tests that press Ctrl-C on
# `mmjobs up` or `mmjobs batch watch` would see it ignored. A handler (not SIG_IGN) is reset to the default on exec.
signal.signal(signal.SIGINT, signal.default_int_handler)


def _worker_suffix() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def database_url() -> str:
    return fresh_database(f"mmjobs_test_{_worker_suffix()}")


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, redis_url=TEST_REDIS_URL, minimax_api_key=None)


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One outer transaction per test, rolled back at the end: tests never see each other's rows."""
    with engine.connect() as conn:
        outer = conn.begin()
        yield conn
        outer.rollback()


@pytest.fixture
def session_factory(connection: Connection) -> sessionmaker[Session]:
    # Commits inside the code under test only release a savepoint of the outer transaction.
    return sessionmaker(bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint")


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


@pytest.fixture
def app(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(settings)
    app.state.session_factory = session_factory
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def make_key(session: Session, tenant: str) -> str:
    secret = tenants.create_key(session, tenant_name=tenant).secret
    session.commit()
    return secret


@pytest.fixture
def api_key(session: Session) -> str:
    return make_key(session, "acme")


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}
