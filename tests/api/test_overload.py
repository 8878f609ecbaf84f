"""One API process serves at most MMJOBS_API_MAX_CONCURRENCY requests at once: the next is answered 503 with
Retry-After at once (idle connections do not count), health checks always pass, and it serves again as soon as
a slot frees."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from service.api.limits import ConcurrencyLimit


class Held:
    """An ASGI app whose requests wait until released, so the test controls how many are in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


@pytest.mark.anyio
async def test_requests_beyond_the_limit_get_503_with_retry_after_then_are_served_again() -> None:
    inner = Held()
    limited = ConcurrencyLimit(inner, limit=2)
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        first = [asyncio.create_task(client.get("/v1/jobs")) for _ in range(2)]
        await until(lambda: inner.entered == 2)

        refused = await client.get("/v1/jobs")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "overloaded"
        assert inner.entered == 2  # never reached the app

        health = asyncio.create_task(client.get("/healthz"))  # exempt: passes even when full
        await until(lambda: inner.entered == 3)

        inner.release.set()
        assert [r.status_code for r in await asyncio.gather(*first, health)] == [200, 200, 200]
        assert (await client.get("/v1/jobs")).status_code == 200
    assert limited.in_flight == 0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
