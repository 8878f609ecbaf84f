"""One API process reads at most MMJOBS_MAX_CONCURRENT_LARGE_BODIES large bodies at once (issue 14.2): beyond
that a large body gets 503 with Retry-After, whether it declares its length (refused before it is read) or
streams chunked (refused as soon as it turns out large), on the native API and the drop-ins alike; small
requests are never held back, nothing refused is stored, and the slot frees when the upload ends.

The upload holding the slot is held open by its own body generator, gated by an event: no sleeps."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.models import Batch, Job

MODEL = "MiniMax-M2.7"
LARGE = 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def capped(settings: Settings, session_factory: sessionmaker[Session]) -> FastAPI:
    app = create_app(settings.model_copy(update={"max_concurrent_large_bodies": 1, "large_body_bytes": LARGE}))
    app.state.session_factory = session_factory
    return app


def jsonl(n: int) -> bytes:
    lines = [
        {
            "custom_id": f"doc-{i}",
            "model": MODEL,
            "params": {"max_tokens": 5, "messages": [{"role": "user", "content": f"document {i} " + "x" * 100}]},
        }
        for i in range(n)
    ]
    return "\n".join(json.dumps(x) for x in lines).encode()


def stored(session: Session) -> tuple[int, int]:
    return (
        int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        int(session.scalar(select(func.count()).select_from(Job)) or 0),
    )


@pytest.mark.anyio
async def test_large_bodies_beyond_the_cap_get_503_with_retry_after(
    capped: FastAPI, api_key: str, session: Session
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    body = jsonl(30)
    assert len(body) > 2 * LARGE
    first_read = asyncio.Event()
    gate = asyncio.Event()

    async def held_open() -> AsyncIterator[bytes]:
        yield body[: LARGE + 100]  # past the threshold: this upload now holds the only slot
        first_read.set()  # the app asked for more, so it has taken the first chunk
        await gate.wait()
        yield body[LARGE + 100 :]

    async def chunked(data: bytes) -> AsyncIterator[bytes]:
        yield data

    before = stored(session)
    transport = httpx.ASGITransport(app=capped)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        holder = asyncio.create_task(
            client.post("/v1/batches", content=held_open(), headers=auth | {"content-type": "application/x-ndjson"})
        )
        await first_read.wait()

        # Declared length: refused before a byte is read.
        declared = await client.post(
            "/v1/batches", content=body, headers=auth | {"content-type": "application/x-ndjson"}
        )
        assert declared.status_code == 503, declared.text
        assert declared.headers["retry-after"] == "5"
        assert declared.json()["error"]["type"] == "overloaded"

        # Chunked, no length: refused once it passes the threshold, in the drop-in's own error shape.
        anthropic_body = json.dumps(
            {
                "requests": [
                    {
                        "custom_id": f"d{i}",
                        "params": {
                            "model": MODEL,
                            "max_tokens": 5,
                            "messages": [{"role": "user", "content": "y" * 200}],
                        },
                    }
                    for i in range(10)
                ]
            }
        ).encode()
        assert len(anthropic_body) > LARGE
        dropin = await client.post(
            "/anthropic/v1/messages/batches",
            content=chunked(anthropic_body),
            headers={"x-api-key": api_key, "content-type": "application/json"},
        )
        assert dropin.status_code == 503, dropin.text
        assert dropin.headers["retry-after"] == "5"
        assert dropin.json()["type"] == "error"

        # A large body that FastAPI itself parses (a job's JSON), chunked: 503 too, not a body-parsing 400.
        big_job = {"model": MODEL, "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "z" * 2000}]}}
        parsed = await client.post(
            "/v1/jobs",
            content=chunked(json.dumps(big_job).encode()),
            headers=auth | {"content-type": "application/json"},
        )
        assert parsed.status_code == 503, parsed.text
        assert parsed.headers["retry-after"] == "5"

        # A small request is never held back by the large ones.
        job: dict[str, Any] = {
            "model": MODEL,
            "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        }
        small = await client.post("/v1/jobs", json=job, headers=auth)
        assert small.status_code == 202, small.text
        assert stored(session) == (before[0], before[1] + 1)  # the refused uploads stored nothing

        gate.set()
        held = await holder
        assert held.status_code == 202, held.text
        assert held.json()["request_total"] == 30

        # The slot is free again.
        again = await client.post("/v1/batches", content=body, headers=auth | {"content-type": "application/x-ndjson"})
        assert again.status_code == 202, again.text
    assert stored(session) == (before[0] + 2, before[1] + 1 + 60)
