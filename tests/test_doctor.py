"""`mmjobs doctor` against the simulator: a good key passes, a bad key and a wrong base path are named (15.2)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.config import get_settings
from service.doctor import run_checks
from simulator.config import SimulatorConfig
from simulator.server import running_simulator

KEY = "sk-doctor-good"


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_simulator(SimulatorConfig(api_keys=KEY, latency="0")) as url:
        yield url


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/", "/anthropic", "/anthropic/"])
def test_good_key_passes_both_formats_whatever_form_the_base_url_takes(sim_url: str, suffix: str) -> None:
    verdicts = run_checks(base_url=sim_url + suffix, api_key=KEY)
    assert [v.status for v in verdicts] == ["ok", "ok", "ok"], [v.line() for v in verdicts]
    assert "anthropic format" in verdicts[1].line()
    assert "openai format" in verdicts[2].line()


def test_bad_key_verdict_names_the_key(sim_url: str) -> None:
    verdicts = run_checks(base_url=sim_url, api_key="sk-wrong")
    for verdict in verdicts[1:]:
        assert verdict.status == "fail"
        assert "API key was refused" in verdict.summary
        assert verdict.fix is not None
        assert "MINIMAX_API_KEY" in verdict.fix


def test_wrong_base_path_verdict_names_the_base_url(sim_url: str) -> None:
    verdicts = run_checks(base_url=sim_url + "/api/minimax", api_key=KEY)
    for verdict in verdicts[1:]:
        assert verdict.status == "fail"
        assert "base URL is wrong" in verdict.summary
        assert verdict.fix is not None
        assert "MINIMAX_BASE_URL" in verdict.fix


def test_unknown_model_verdict_names_the_model(sim_url: str) -> None:
    verdicts = run_checks(base_url=sim_url, api_key=KEY, model="MiniMax-M9")
    assert all("MiniMax-M9" in v.summary and v.status == "fail" for v in verdicts[1:])


def test_unreachable_host_names_the_base_url() -> None:
    verdicts = run_checks(base_url="http://127.0.0.1:9", api_key=KEY, timeout=2)
    assert all(v.status == "fail" and v.fix and "MINIMAX_BASE_URL" in v.fix for v in verdicts[1:])


def test_cli_prints_one_line_per_check_and_exits_non_zero_on_failure(
    sim_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINIMAX_BASE_URL", sim_url + "/v1")
    monkeypatch.setenv("MINIMAX_API_KEY", KEY)
    get_settings.cache_clear()
    try:
        good = CliRunner().invoke(app, ["doctor"])
        assert good.exit_code == 0, good.output
        assert [line[:4] for line in good.output.splitlines()] == ["OK  ", "OK  ", "OK  "]
        monkeypatch.setenv("MINIMAX_API_KEY", "sk-wrong")
        get_settings.cache_clear()
        bad = CliRunner().invoke(app, ["doctor"])
        assert bad.exit_code == 1
        assert bad.output.count("FAIL") == 2
        assert "MINIMAX_API_KEY" in bad.output
    finally:
        get_settings.cache_clear()
