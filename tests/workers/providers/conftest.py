"""The simulator the provider tests call (a fresh ledger per test), and how they read what it billed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from workers.providers import get_provider


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with running_simulator(SimulatorConfig(latency=0, output_tokens=48, seed=1)) as url:
        yield url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        client.post(f"{base_url}/_sim/reset").raise_for_status()
        yield client


def short_call(client: httpx.Client, base_url: str, text: str, *, fmt: str = "anthropic") -> str:
    """One short streamed call through an adapter, as a worker makes it; the answer's text."""
    completion = get_provider(fmt).call(
        client=client,
        base_url=base_url,
        api_key="sk-simulator",
        model="MiniMax-M2.7",
        params={"messages": [{"role": "user", "content": text}], "max_tokens": 64},
        stream=True,
    )
    return completion.text


def ledger(http: httpx.Client, base_url: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = http.get(f"{base_url}/_sim/ledger").json()["entries"]
    return entries
