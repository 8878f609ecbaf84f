"""Test databases and Redis: created fresh and built by the real Alembic migrations, never by create_all.

Where the servers are: `MMJOBS_TEST_DATABASE_URL` (any database on the Postgres server the tests may create
databases on) and `MMJOBS_TEST_REDIS_URL` (a Redis server; the tests pick its numbered databases). Defaults: the
machine's own at 127.0.0.1:5432 and :6379. `MMJOBS_TEST_DB_PREFIX` prefixes every database a run creates, so two
runs side by side on one server never drop each other's. Where neither is set and nothing answers at the default,
tests/servers.py starts embedded servers for the run and sets both."""

from __future__ import annotations

import os

import psycopg
from sqlalchemy.engine import make_url

from tests.servers import ensure_servers

ensure_servers()
_SERVER = make_url(os.environ.get("MMJOBS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
ADMIN_DSN = _SERVER.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
_BASE = _SERVER.set(drivername="postgresql+psycopg", database="").render_as_string(hide_password=False)
BASE_URL = _BASE.rstrip("/") + "/"
PREFIX = os.environ.get("MMJOBS_TEST_DB_PREFIX", "")
REDIS_SERVER = os.environ.get("MMJOBS_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
# A Redis URL's path is its database number: keep only the server.
if REDIS_SERVER.count("/") > 2:
    REDIS_SERVER = REDIS_SERVER.rsplit("/", 1)[0]


def redis_url(db: int) -> str:
    """The URL of numbered database `db` on the test Redis server."""
    return f"{REDIS_SERVER}/{db}"


def database_url(name: str) -> str:
    return BASE_URL + PREFIX + name


def fresh_database(name: str) -> str:
    """Drop and recreate `name`, migrate it to head, and return its SQLAlchemy URL."""
    from service.migrate import upgrade

    name = PREFIX + name
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = BASE_URL + name
    upgrade(url)
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{PREFIX + name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return str(make_url(url).database)
