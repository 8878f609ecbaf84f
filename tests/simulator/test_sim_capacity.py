"""The simulator holds many slow calls open at once, streamed and not (issue 17.3: benchmarks/inflight.py drives
10,000 through one simulator process; this checks a few hundred)."""

from __future__ import annotations

import asyncio
import json

import httpx

from simulator.remote import SimulatorControl
from tests.simulator.conftest import KEY

CALLS = 500
LATENCY = "8"  # long enough for every call to be open before the first answers


async def _one(client: httpx.AsyncClient, i: int) -> tuple[int, str]:
    body = {
        "model": "MiniMax-M2.7",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": f"call {i}"}],
        "stream": i % 2 == 0,
    }
    async with client.stream("POST", "/anthropic/v1/messages", json=body) as response:
        raw = (await response.aread()).decode()
    if body["stream"]:
        events = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
        last = events[-1]["type"] if events else ""
        return response.status_code, last
    return response.status_code, json.loads(raw)["type"]


async def _all(base_url: str) -> list[tuple[int, str]]:
    limits = httpx.Limits(max_connections=CALLS + 10)
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=120) as client:
        return await asyncio.gather(*(_one(client, i) for i in range(CALLS)))


def test_holds_hundreds_of_slow_calls_open_at_once(sim: SimulatorControl) -> None:
    sim.configure(latency=LATENCY)
    answers = asyncio.run(_all(sim.base_url))

    streamed = answers[0::2]
    plain = answers[1::2]
    assert streamed == [(200, "message_stop")] * len(streamed)
    assert plain == [(200, "message")] * len(plain)
    stats = sim.stats()
    assert stats["requests_total"] == CALLS
    assert stats["peak_in_flight"] == CALLS
    assert stats["in_flight"] == 0
