"""How `mmjobs up` waits on what it starts (issue 16.2), on real processes: as long as a process lives and makes
progress, never a fixed time; one that dies is named with its last log lines; one that is stuck is named too."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from service.embedded import Stack, StartupError, _print_failure


def _stack(tmp_path: Path, stall_seconds: float) -> tuple[Stack, Console]:
    console = Console(file=io.StringIO(), width=200)
    return Stack(logs_dir=tmp_path, console=console, stall_seconds=stall_seconds), console


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_slow_start_that_progresses_is_waited_for_past_the_stall_limit(tmp_path: Path) -> None:
    """Ready only after 60 lines 0.1 s apart, with a 3 s stall limit: still waited for, as it keeps printing."""
    stack, console = _stack(tmp_path, stall_seconds=3)
    child = stack.spawn(
        "slow",
        _python("import time\nfor i in range(60):\n    print(f'loading {i}', flush=True); time.sleep(0.1)\n"
                "print('ready', flush=True)\ntime.sleep(60)"),
        env={},
    )  # fmt: skip
    try:
        stack.wait_ready(child, "the slow one", lambda: "ready" in child.tail, console.status(""))
        assert child.proc.poll() is None
        assert list(child.tail)[-2:] == ["loading 59", "ready"]
    finally:
        stack.stop()
    assert child.proc.returncode is not None


def test_a_process_that_dies_while_starting_is_named_with_its_last_lines(tmp_path: Path) -> None:
    stack, console = _stack(tmp_path, stall_seconds=60)
    code = (
        "import sys\nfor i in range(30): print(f'line {i}')\n"
        "print('OSError: [Errno 98] Address already in use')\nsys.exit(3)"
    )
    child = stack.spawn("api", _python(code), env={})
    with pytest.raises(StartupError) as caught:
        stack.wait_ready(child, "the API", lambda: False, console.status(""))
    stack.stop()
    failure = caught.value
    assert failure.message == "the API exited with code 3 while starting"
    assert failure.log == tmp_path / "api.log"
    # The last lines, not the first: the reason is at the end.
    assert failure.tail[-1] == "OSError: [Errno 98] Address already in use"
    assert "line 0" not in failure.tail
    _print_failure(console, failure)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "error: the API exited with code 3 while starting" in shown
    assert f"its last lines ({tmp_path / 'api.log'}):" in shown
    assert "Address already in use" in shown
    assert "mmjobs up --port N --simulator-port M" in shown


def test_a_process_alive_but_stuck_is_named(tmp_path: Path) -> None:
    """No output and no CPU time: after the stall limit, named as stuck with what it printed last."""
    stack, console = _stack(tmp_path, stall_seconds=1)
    child = stack.spawn(
        "worker", _python("import time\nprint('connecting to redis', flush=True)\ntime.sleep(120)"), env={}
    )
    try:
        with pytest.raises(StartupError) as caught:
            stack.wait_ready(child, "the worker", lambda: False, console.status(""))
    finally:
        stack.stop()
    assert caught.value.message.startswith("the worker is alive but made no progress (no output, no CPU time) for 1s")
    assert "MMJOBS_STARTUP_STALL_SECONDS" in caught.value.message
    assert caught.value.tail == ["connecting to redis"]
    assert child.proc.returncode is not None  # stopped with the rest


def test_a_one_shot_step_that_fails_is_named(tmp_path: Path) -> None:
    stack, console = _stack(tmp_path, stall_seconds=60)
    child = stack.spawn(
        "initdb", _python("import sys\nprint('initdb: could not create directory')\nsys.exit(1)"), env={}
    )
    with pytest.raises(StartupError) as caught:
        stack.wait_exit(child, "the embedded Postgres (initdb, first run only)", console.status(""))
    assert caught.value.message == "the embedded Postgres (initdb, first run only) exited with code 1"
    assert caught.value.tail == ["initdb: could not create directory"]
