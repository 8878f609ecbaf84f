"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api import docs as api_docs
from service.api import errors
from service.api.deps import SessionDep
from service.api.large_bodies import LargeBodyLimit
from service.api.limits import UPLOAD_PATHS, ConcurrencyLimit
from service.api.retry import RetryConflicts
from service.batches.documents_router import router as documents_router
from service.batches.router import router as batches_router
from service.config import Settings, get_settings
from service.db import engine_for, make_session_factory
from service.dropins import router as dropins_router
from service.files.limits import BodySizeLimitWithFiles
from service.files.router import router as files_router
from service.idempotency import install as install_idempotency
from service.jobs.router import router as jobs_router
from service.limits.intake import RateLimitHeaders
from service.limits.router import router as limits_router
from service.observability import logging as obs_logging
from service.observability import metrics, tracing
from service.observability.requests import RequestLog
from service.schedules.router import router as schedules_router
from service.tenants.keycache import KeyCache
from service.ui import router as ui
from service.usage.router import router as usage_router
from service.webhooks.router import router as webhooks_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync routes run on this thread pool, and FastAPI validates their responses on it too. A request that
        # holds a database connection must always find a free slot to finish, so the pool is sized well above
        # the concurrency uvicorn admits (`mmjobs api` sets limit_concurrency below it).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield
        engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="minimax-jobs",
        version="0.1.0",
        description="Asynchronous jobs, batches and schedules for MiniMax models. "
        "Authenticate with `Authorization: Bearer KEY` or `x-api-key: KEY`.",
        # Served by service/api/docs.py from a package's assets, not a CDN (works offline).
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    engine = engine_for(settings)
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
    app.state.key_cache = KeyCache(app.state.redis)  # verified API keys, briefly (service/tenants/keycache.py)
    errors.install(app)
    # Innermost of our middlewares: a deadlock or serialization failure re-runs the whole request (issue 13).
    app.add_middleware(RetryConflicts)
    # Idempotency-Key on every POST (issue 7); added first so BodySizeLimit, outside it, refuses oversized bodies.
    install_idempotency(app)
    # Outside idempotency, inside the size limit: too many large bodies at once get 503 before a key is claimed.
    app.add_middleware(
        LargeBodyLimit, limit=settings.max_concurrent_large_bodies, large_bytes=settings.large_body_bytes
    )
    app.add_middleware(
        BodySizeLimitWithFiles,  # BodySizeLimit, with POST /v1/files up to max_file_bytes (issue 6)
        max_bytes=settings.max_body_bytes,
        large_bytes=settings.max_upload_bytes,
        large_prefixes=UPLOAD_PATHS,
        files_bytes=settings.max_file_bytes,
    )
    app.add_middleware(ConcurrencyLimit, limit=settings.api_max_concurrency)
    app.add_middleware(RateLimitHeaders)  # the RateLimit fields of requests counted by limits.intake (issue 14)
    # Observability (issue 9): JSON logs, one line per request (outermost, so it sees every status), /metrics.
    obs_logging.configure(settings)
    app.add_middleware(RequestLog)
    metrics.install(app, settings)
    tracing.configure(settings, role="api")  # OpenTelemetry, when the extra is installed and MMJOBS_OTEL_ENABLED
    app.include_router(jobs_router)
    app.include_router(documents_router)
    app.include_router(batches_router)
    app.include_router(limits_router)
    app.include_router(webhooks_router)
    app.include_router(usage_router)
    app.include_router(dropins_router)
    app.include_router(files_router)
    app.include_router(schedules_router)
    app.include_router(ui.router)
    api_docs.install(app)
    app.mount(ui.STATIC_PATH, ui.static_files(), name="ui-static")

    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> dict[str, str]:
        # Names the service: `mmjobs up` waits for this answer, not for whatever else may listen on the port.
        return {"status": "ok", "service": "minimax-jobs"}

    @app.get("/readyz", tags=["health"], summary="Postgres and Redis are reachable (503 otherwise)")
    def readyz(session: SessionDep) -> JSONResponse:
        problems = {}
        try:
            session.execute(text("SELECT 1"))
        except Exception as exc:
            problems["postgres"] = str(exc)[:200]
        try:
            app.state.redis.ping()
        except redis.RedisError as exc:
            problems["redis"] = str(exc)[:200]
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, 503)
        return JSONResponse({"status": "ready"})

    return app
