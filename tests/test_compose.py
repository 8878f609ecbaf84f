"""docker-compose.yml cannot be run here (no Docker engine); check what can be: it parses, it has the production
shape the README promises, and every command it runs exists in the `mmjobs` CLI."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from service.cli import app
from tests.procs import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "scheduler", "simulator"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert services[name]["healthcheck"]["test"], name
    assert services["simulator"]["profiles"] == ["offline"]
    for name in ("api", "worker", "scheduler"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


@pytest.mark.parametrize("service", ["migrate", "api", "worker", "scheduler", "simulator"])
def test_every_command_exists_in_the_cli(compose: dict[str, Any], service: str) -> None:
    command = compose["services"][service]["command"]
    assert command[0] == "mmjobs"
    if service == "simulator":
        # Its flags are the simulator's own parser's; check they parse there.
        from simulator.__main__ import _parser

        _parser().parse_args(command[2:])
        return
    result = CliRunner().invoke(app, [*command[1:2], "--help"])
    assert result.exit_code == 0, result.output
    options = [arg for arg in command[2:] if arg.startswith("--")]
    for option in options:
        assert option in result.output, f"{service}: {option} is not an option of `mmjobs {command[1]}`"
