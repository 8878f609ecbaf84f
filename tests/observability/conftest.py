"""An API whose /metrics is never cached, and a scrape that returns every sample by (name, labels)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.models import Tenant
from tests.procs import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a missing sample counts as 0 (Prometheus' view of a label set not seen yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def obs_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_cache_seconds": 0})


@pytest.fixture
def obs_app(obs_settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(obs_settings)
    app.state.session_factory = session_factory
    return app


@pytest.fixture
def obs_client(obs_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(obs_app) as c:
        yield c


def scrape(client: TestClient) -> Samples:
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


@pytest.fixture
def tenant_id(session: Session, api_key: str) -> str:
    return str(session.scalar(select(Tenant.id).where(Tenant.name == "acme")))


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on: connections to it are refused at once."""
    return free_port()
