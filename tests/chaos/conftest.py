"""A private Postgres cluster and redis-server for the chaos tests (the faults restart them, so never the shared
ones), started once per module on free ports and removed afterwards."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.chaos.infra import Infra, missing_tools, private_infra


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"chaos tests need {', '.join(missing)}")
    # Not under tmp_path_factory: pytest's base directory is private to us (0700), and Postgres runs as its own
    # OS user when we are root.
    root = Path(tempfile.mkdtemp(prefix="mmjobs-chaos-test-"))
    try:
        with private_infra(root, tmp_path_factory.mktemp("chaos-infra-logs")) as servers:
            yield servers
    finally:
        shutil.rmtree(root, ignore_errors=True)
