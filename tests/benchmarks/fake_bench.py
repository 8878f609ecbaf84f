"""A stand-in benchmark for tests of benchmarks.all: writes one section the way every benchmark does."""

from __future__ import annotations

import argparse

from benchmarks.report import write_section


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--log-dir")
    args = p.parse_args(argv)
    write_section("fake", "Fake", "quick" if args.quick else "full")
    print("fake ran")  # noqa: T201
    return 0
