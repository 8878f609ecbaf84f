"""Serves the dashboard: its page at /ui and its scripts and styles at /ui/static (both mounted in app.py)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PATH = "/ui/static"

# Files are served as they are on disk (nothing is built), so the browser must revalidate them: a cached script
# from the previous release beside a new page would break the app.
_NO_CACHE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# The page calls only its own origin and loads nothing from elsewhere. No inline script or style is needed, so the
# policy forbids them: markup that slipped into a job's result text could not run.
_PAGE_HEADERS = {
    **_NO_CACHE,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)


@router.get("/ui")
def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/ui/")
def dashboard_slash() -> RedirectResponse:
    return RedirectResponse("/ui", status_code=308)


@router.get("/")
def root() -> RedirectResponse:
    """A browser opened at the API's address lands on the dashboard (not a JSON 404)."""
    return RedirectResponse("/ui", status_code=307)


class _Static(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_NO_CACHE)
        return response


def static_files() -> StaticFiles:
    """The app's scripts, styles and icon, for `app.mount(STATIC_PATH, ...)`."""
    return _Static(directory=STATIC_DIR)
