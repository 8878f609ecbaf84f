"""The API served by a real uvicorn server in a thread, on a database of its own: requests commit for real and
run concurrently, as in production. Used by the CLI tests and the Idempotency-Key concurrency test."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory, transaction
from service.tenants import service as tenants
from tests.conftest import TEST_REDIS_URL
from tests.db import drop_database, fresh_database
from tests.procs import free_port, wait_until


@dataclass(frozen=True)
class Live:
    url: str
    key: str
    settings: Settings
    factory: sessionmaker[Session]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@contextmanager
def live_server(database: str, **settings: Any) -> Iterator[Live]:
    url = fresh_database(database)
    config = Settings(database_url=url, redis_url=TEST_REDIS_URL, **settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    engine = make_engine(url)
    try:
        wait_until(lambda: server.started, 30, "the API server")
        factory = make_session_factory(engine)
        with transaction(factory) as session:
            secret = tenants.create_key(session, tenant_name="live").secret
        yield Live(url=f"http://127.0.0.1:{port}", key=secret, settings=config, factory=factory)
    finally:
        server.should_exit = True
        thread.join(15)
        engine.dispose()
        drop_database(database)
