"""`/healthz` answers while the process is up; `/readyz` is 503 and names what is unreachable."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings


def test_healthz_and_readyz_when_everything_is_up(obs_client: TestClient) -> None:
    assert obs_client.get("/healthz").json() == {"status": "ok", "service": "minimax-jobs"}
    r = obs_client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


def test_readyz_names_redis_when_it_is_down(settings: Settings, unused_port: int) -> None:
    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{unused_port}/0"}))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert set(body["problems"]) == {"redis"}


def test_readyz_names_postgres_when_it_is_down(settings: Settings, unused_port: int) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{unused_port}/mmjobs"
    with TestClient(create_app(settings.model_copy(update={"database_url": url}))) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
    assert r.status_code == 503
    assert set(r.json()["problems"]) == {"postgres"}


def test_readyz_names_both(settings: Settings, unused_port: int) -> None:
    down = settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{unused_port}/mmjobs",
            "redis_url": f"redis://127.0.0.1:{unused_port}/0",
        }
    )
    with TestClient(create_app(down)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert set(r.json()["problems"]) == {"postgres", "redis"}
