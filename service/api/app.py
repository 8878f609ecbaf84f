"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text

from service.api import errors
from service.api.deps import SessionDep, SettingsDep
from service.api.limits import BodySizeLimit
from service.config import Settings, get_settings
from service.db import make_engine, make_session_factory
from service.jobs.router import router as jobs_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="minimax-jobs",
        version="0.1.0",
        description="Asynchronous jobs, batches and schedules for MiniMax models. "
        "Authenticate with `Authorization: Bearer KEY` or `x-api-key: KEY`.",
    )
    app.state.settings = settings
    engine = make_engine(settings.database_url)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    errors.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.include_router(jobs_router)

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Postgres and Redis are reachable")
    def readyz(session: SessionDep, settings: SettingsDep) -> dict[str, str]:
        import redis

        session.execute(text("SELECT 1"))
        redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1).ping()
        return {"status": "ready"}

    return app
