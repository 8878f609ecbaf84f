"""Test databases: created fresh and built by the real Alembic migrations, never by create_all."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"


def fresh_database(name: str) -> str:
    """Drop and recreate `name`, migrate it to head, and return its SQLAlchemy URL."""
    from service.migrate import upgrade

    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = BASE_URL + name
    upgrade(url)
    return url


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return str(make_url(url).database)
