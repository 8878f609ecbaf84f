"""``python -m simulator --port 8090 --latency 0.5-2 --rpm 200 --fault 429=0.1 --fault midstream=0.05``.

Flags override the ``MMJOBS_SIM_*`` environment variables.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from simulator.config import SimulatorConfig
from simulator.server import run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulator", description="A MiniMax look-alike HTTP server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--latency", help="seconds per call: MIN or MIN-MAX, e.g. 0.5-2")
    parser.add_argument("--rpm", help="requests per minute per (api key, model); 'none' for unlimited")
    parser.add_argument("--tpm", help="tokens per minute per (api key, model); 'none' for unlimited")
    parser.add_argument(
        "--fault",
        action="append",
        metavar="KIND=RATE",
        help="random fault rate, repeatable; KIND in 429, 500, 529, base_resp, midstream, hang",
    )
    parser.add_argument("--base-resp-code", type=int, help="status_code of the base_resp fault (default 1000)")
    parser.add_argument("--api-keys", help="comma-separated accepted API keys (default sk-simulator)")
    parser.add_argument("--output-tokens", type=int, help="default answer length in tokens (default 48)")
    parser.add_argument("--seed", type=int, help="RNG seed for latency and fault draws")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The environment's config with every flag that was given laid over it."""
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "latency": args.latency,
            "rpm": args.rpm,
            "tpm": args.tpm,
            "base_resp_code": args.base_resp_code,
            "api_keys": args.api_keys,
            "output_tokens": args.output_tokens,
            "seed": args.seed,
        }.items()
        if value is not None
    }
    if args.fault:
        overrides["faults"] = ",".join(args.fault)
    return SimulatorConfig(**overrides)


def _field(location: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in location) or "config"


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_field(error['loc'])}: {error['msg'].removeprefix('Value error, ')}" for error in exc.errors()
        )
        parser.error(f"invalid simulator settings: {problems}")
    run(config, args.host, args.port, log_level=args.log_level)


if __name__ == "__main__":
    main(sys.argv[1:])
