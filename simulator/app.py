"""``create_app(config)``: the simulator as an ASGI app."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from simulator import anthropic as anthropic_routes
from simulator import control
from simulator import files as files_routes
from simulator import openai as openai_routes
from simulator.config import SimulatorConfig
from simulator.errors import SimError
from simulator.state import SimState, get_state

_API_PREFIXES = ("/anthropic/", "/v1/")


class _InFlight:
    """Counts API requests from arrival until the last byte of the answer (streams included) is sent."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(_API_PREFIXES):
            await self.app(scope, receive, send)
            return
        self.state.stats.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.stats.leave()


async def _render_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, SimError):  # pragma: no cover - registered for SimError only
        raise exc
    get_state(request).stats.outcome(f"http_{exc.status}")
    if request.url.path.startswith("/anthropic"):
        body = anthropic_routes.error_body(exc)
    else:
        body = openai_routes.error_body(exc)
    return JSONResponse(body, status_code=exc.status)


def create_app(config: SimulatorConfig | None = None) -> FastAPI:
    """A fresh simulator with its own ledger, counters and limiter; config from the environment if omitted."""
    state = SimState(config if config is not None else SimulatorConfig())
    app = FastAPI(title="MiniMax simulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sim = state
    app.include_router(anthropic_routes.router)
    app.include_router(openai_routes.router)
    app.include_router(control.router)
    app.include_router(files_routes.router)
    app.add_exception_handler(SimError, _render_error)
    app.add_middleware(_InFlight, state=state)
    return app
