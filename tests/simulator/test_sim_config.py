"""Settings (environment, CLI, run-time changes), the token rule, and the CLI process itself."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from simulator.__main__ import _parser, config_from_args, main
from simulator.app import create_app
from simulator.config import Latency, SimulatorConfig
from simulator.remote import SimulatorControl
from simulator.server import running_simulator
from simulator.tokens import generate, input_tokens, pieces, text_tokens

ROOT = Path(__file__).resolve().parents[2]


def test_compact_forms_parse() -> None:
    config = SimulatorConfig(latency="0.5-2", faults="429=0.1, midstream=0.05", api_keys="a,b", rpm="none")

    assert config.latency == Latency(0.5, 2.0)
    assert config.faults == {"429": 0.1, "midstream": 0.05}
    assert config.api_keys == ("a", "b")
    assert config.rpm is None
    assert SimulatorConfig(latency="3").latency == Latency(3.0, 3.0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("latency", "fast", "latency must be 'MIN' or 'MIN-MAX'"),
        ("latency", "2-1", "0 <= MIN <= MAX"),
        ("faults", "teapot=0.1", "unknown fault kind 'teapot'"),
        ("faults", "429=1.5", "must be in [0, 1]"),
        ("faults", "429=0.6,500=0.6", "add up to at most 1"),
        ("faults", "429", "KIND=RATE"),
        ("rpm", 0, "greater than or equal to 1"),
        ("base_resp_code", 0, "means success"),
    ],
)
def test_bad_settings_say_what_is_wrong(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SimulatorConfig.model_validate({field: value})


def test_environment_is_read_and_flags_override_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMJOBS_SIM_RPM", "7")
    monkeypatch.setenv("MMJOBS_SIM_TPM", "9000")
    monkeypatch.setenv("MMJOBS_SIM_FAULTS", "500=0.2")
    monkeypatch.setenv("MMJOBS_SIM_LATENCY", "1-2")
    monkeypatch.setenv("MMJOBS_SIM_API_KEYS", "k1,k2")

    from_env = SimulatorConfig()
    assert (from_env.rpm, from_env.tpm, from_env.latency) == (7, 9000, Latency(1, 2))
    assert from_env.faults == {"500": 0.2}
    assert from_env.api_keys == ("k1", "k2")

    args = _parser().parse_args(["--rpm", "3", "--fault", "429=0.1", "--fault", "hang=0.01", "--seed", "5"])
    overridden = config_from_args(args)
    assert overridden.rpm == 3
    assert overridden.tpm == 9000
    assert overridden.faults == {"429": 0.1, "hang": 0.01}
    assert overridden.seed == 5


def test_cli_parse_error_exits_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--latency", "soon", "--fault", "429=2"])

    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "latency: latency must be 'MIN' or 'MIN-MAX'" in error
    assert "faults: fault rate for 429 must be in [0, 1]" in error


def test_runtime_config_changes_and_rejects_bad_values(sim: SimulatorControl) -> None:
    changed = sim.configure(latency="0.1-0.2", rpm=10, faults="529=0.5")
    assert changed["latency"] == "0.1-0.2"
    assert changed["rpm"] == 10
    assert changed["faults"] == "529=0.5"

    bad = httpx.post(sim.base_url + "/_sim/config", json={"faults": "529=2"})
    assert bad.status_code == 422
    assert "fault rate for 529 must be in [0, 1]" in bad.text
    assert httpx.get(sim.base_url + "/_sim/config").json()["faults"] == "529=0.5"


def test_token_rule() -> None:
    assert [text_tokens(text) for text in ["", "a", "abcd", "abcde"]] == [0, 1, 1, 2]
    messages = [{"role": "user", "content": "abcdefgh"}]
    # 3 per request + (4 + 2) for the message + (4 + 1) for the system prompt.
    assert input_tokens(system="sys", messages=messages, tools=None) == 3 + 6 + 5
    image = [
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "url", "url": "u", "detail": "low"}}],
        }
    ]
    assert input_tokens(system=None, messages=image, tools=None) == 3 + 4 + 300


def test_generation_is_deterministic_and_respects_max_tokens() -> None:
    first = generate("hello", target_tokens=100, max_tokens=1000, thinking=True)
    assert first == generate("hello", target_tokens=100, max_tokens=1000, thinking=True)
    assert first.output_tokens == 100
    assert text_tokens(first.thinking or "") == 25

    cut = generate("hello", target_tokens=100, max_tokens=30, thinking=True)
    assert cut.truncated
    assert cut.output_tokens == 30
    assert sum(text_tokens(part) for part in pieces(cut.text)) == text_tokens(cut.text)

    short = generate("x" * 200, target_tokens=2, max_tokens=1000, thinking=False)
    assert short.text.startswith("SIM:")
    assert "x" * 60 in short.text


def test_python_dash_m_simulator_serves() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--port", str(port), "--rpm", "5", "--log-level", "warning"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz")
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "service": "minimax-simulator"}
        assert httpx.get(f"http://127.0.0.1:{port}/_sim/config").json()["rpm"] == 5
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_seed_makes_fault_draws_repeatable() -> None:
    config = SimulatorConfig(seed=7, faults="500=0.5")
    body = {"model": "MiniMax-M3", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}

    def statuses(url: str) -> list[int]:
        with httpx.Client(base_url=url, headers={"x-api-key": "sk-simulator"}) as http:
            return [http.post("/anthropic/v1/messages", json=body).status_code for _ in range(30)]

    with running_simulator(config) as first_url:
        first = statuses(first_url)
        with SimulatorControl(first_url) as control:
            control.reset()
        replayed = statuses(first_url)
    with running_simulator(config) as second_url:
        second = statuses(second_url)

    assert set(first) == {200, 500}
    assert first == replayed == second


def test_create_app_serves_in_process() -> None:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(SimulatorConfig(api_keys="sk-in-process")))
        async with httpx.AsyncClient(transport=transport, base_url="http://sim") as http:
            return await http.post(
                "/v1/chat/completions",
                headers={"Authorization": "Bearer sk-in-process"},
                json={"model": "MiniMax-M2.5", "messages": [{"role": "user", "content": "ping"}]},
            )

    response = asyncio.run(call())

    assert response.status_code == 200
    assert "SIM:" in response.json()["choices"][0]["message"]["content"]
