"""One simulator per test session, put back to its defaults before every test."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from simulator.config import SimulatorConfig
from simulator.remote import SimulatorControl
from simulator.server import running_simulator

KEY = "sk-simulator"
OTHER_KEY = "sk-other-key-9876"
DEFAULTS = {
    "latency": "0",
    "rpm": None,
    "tpm": None,
    "faults": "",
    "output_tokens": 48,
    "base_resp_code": 1000,
}


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    with running_simulator(SimulatorConfig(api_keys=f"{KEY},{OTHER_KEY}")) as url:
        yield url


@pytest.fixture
def sim(sim_url: str) -> Iterator[SimulatorControl]:
    with SimulatorControl(sim_url) as control:
        control.configure(**DEFAULTS)
        control.reset()
        yield control


@pytest.fixture
def claude(sim: SimulatorControl) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=sim.base_url + "/anthropic", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client


@pytest.fixture
def oai(sim: SimulatorControl) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url + "/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        yield client
