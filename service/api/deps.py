"""Request dependencies: the session (the one place a request commits) and the authenticated key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.config import Settings
from service.limits import intake
from service.models import ApiKey
from service.tenants import service as tenants


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session; it commits once the route has run.

    scope="function" below: the commit happens before the response is sent, so a client that polls right after
    a 202 always finds its job. The dependency is async on purpose: its commit runs on the event loop instead of
    needing a free thread-pool slot. With a sync dependency, requests queued on a row lock (a budget) could hold
    every slot while the request holding the lock waited for one to commit: a deadlock.
    """
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def get_settings(request: Request) -> Settings:
    # async: a sync dependency costs a hop to the thread pool and back, on every request.
    settings: Settings = request.app.state.settings
    return settings


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _presented_secret(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


def current_key(request: Request, session: SessionDep) -> ApiKey:
    secret = _presented_secret(request)
    if secret is None:
        raise APIError(
            401,
            "authentication_error",
            "missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`",
        )
    key = tenants.authenticate(session, secret=secret, cache=request.app.state.key_cache)
    # End the lookup's transaction at once (when the key was not cached there is one): its pooled connection goes
    # back to the pool now, not when the route returns. Upload routes read their bodies (up to 256 MB, as slowly
    # as the client sends) after this, and a connection held across every slow upload starved the pool for all
    # other requests (issue 13 point 5). The session takes a connection again at its next query; the key stays
    # loaded (expire_on_commit=False).
    if session.in_transaction():
        session.commit()
    if key is None:
        raise APIError(401, "authentication_error", "invalid or revoked API key")
    request.state.tenant = key.tenant_id  # the request log names the tenant
    intake.check(request, key)  # 429 over the tenant's or the key's request rate (issue 14; one Redis call)
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]
