"""One Markdown table per scenario (metric | target | minimax-jobs | baseline), and benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.metrics import MIB, MIN_WINDOWS, Figures
from benchmarks.scenarios import NAMES, Scenario

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# Where every benchmark writes its section. `python -m benchmarks.all` points this at a file of its own (the
# environment variable MMJOBS_BENCH_RESULTS) and assembles RESULTS.md whole from it; a benchmark run on its own
# writes benchmarks/RESULTS.md. Read at import (for modules that import RESULTS) and again by `results_path()`.
RESULTS_ENV = "MMJOBS_BENCH_RESULTS"


def results_path() -> Path:
    """The RESULTS.md to write: $MMJOBS_BENCH_RESULTS if set, else benchmarks/RESULTS.md."""
    return Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)


RESULTS = results_path()
PASS, MISS = "✓", "✗"


@dataclass(frozen=True)
class Side:
    """One side's outcome: its figures, or the error that stopped it."""

    figures: Figures | None = None
    error: str | None = None
    skipped: bool = False


def _num(x: float | None, fmt: str = "{:,.1f}", unit: str = "") -> str:
    return "n/a" if x is None else fmt.format(x) + unit


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 1024**3
    return f"nproc {os.cpu_count()} ({cpu}), {mem:.1f} GiB RAM, Python {platform.python_version()}, {_commit()}"


# What a benchmark's figures depend on: a change here not committed makes the commit named a lie.
CODE_PATHS = (
    "service",
    "workers",
    "simulator",
    "migrations",
    "benchmarks",
    "pyproject.toml",
    ":!benchmarks/RESULTS.md",
)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, timeout=30, cwd=DEFAULT_RESULTS.parent.parent
    ).stdout.rstrip("\n")


def dirty_paths() -> list[str]:
    """Files of the code the benchmarks run that differ from HEAD (modified, staged or untracked)."""
    out = git("status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS)
    return [line[3:] for line in out.splitlines() if line.strip()]  # "XY path": two status letters, a space


def _commit() -> str:
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = dirty_paths()
    except (OSError, subprocess.SubprocessError):
        return "commit unknown"
    return f"commit {head}" + (" + uncommitted changes" if dirty else "")


# A row: label, target key (None: no target), value text, and the check that decides ✓/✗.
Check = Callable[[Figures], bool]
Value = Callable[[Figures], str]


def _rows(s: Scenario) -> list[tuple[str, str | None, Value, Check | None]]:
    rpm, tpm, n = s.sim.rpm, s.sim.tpm, s.jobs

    def ratio(f: Figures) -> float | None:
        return None if f.completion_seconds is None else f.completion_seconds / f.ideal_seconds

    def pct(f: Figures, x: float | None, limit: int | None) -> str:
        if x is None:
            return "n/a (calls spanned less than one limiter window)" if s.limited else "n/a"
        if not limit:
            return f"{x:,.0f} (no limit)"
        text = f"{x:,.0f} ({100 * x / limit:.1f} %"
        if f.rate_windows is not None:
            text += f", {f.rate_windows} windows"
            if f.rate_windows < MIN_WINDOWS:
                text += ": indicative only"
        return text + ")"

    rows: list[tuple[str, str | None, Value, Check | None]] = [
        ("jobs submitted (refused)", None, lambda f: f"{f.jobs:,} ({f.submit_errors})", None),
        ("submission time", None, lambda f: _num(f.submit_seconds, unit=" s"), None),
        (
            f"completion time (ideal {s.ideal_seconds():,.1f} s)",
            "completion_ratio",
            lambda f: "n/a (jobs stuck)" if ratio(f) is None else f"{f.completion_seconds:,.1f} s ({ratio(f):.2f} x)",
            lambda f: (r := ratio(f)) is not None and r <= 1.05,
        ),
        (
            "achieved RPM (% of limit)",
            "rpm_pct",
            lambda f: pct(f, f.achieved_rpm, rpm),
            lambda f: bool(rpm) and f.achieved_rpm is not None and f.achieved_rpm >= 0.97 * (rpm or 0),
        ),
        (
            "achieved TPM (% of limit)",
            "tpm_pct",
            lambda f: pct(f, f.achieved_tpm, tpm),
            lambda f: bool(tpm) and f.achieved_tpm is not None and f.achieved_tpm >= 0.95 * (tpm or 0),
        ),
        ("upstream 429s", "upstream_429", lambda f: f"{f.upstream_429:,}", lambda f: f.upstream_429 == 0),
        (
            "queue wait p50 / p99",
            None,
            lambda f: f"{_num(f.queue_wait_p50, '{:,.2f}')} / {_num(f.queue_wait_p99, '{:,.2f}')} s",
            None,
        ),
        (
            "peak PSS, all worker processes (peak RSS summed, for reference)",
            "peak_pss",
            lambda f: (
                f"{f.peak_pss_bytes / MIB:,.0f} MiB ({f.memory_processes} processes; RSS "
                f"{f.peak_rss_bytes / MIB:,.0f} MiB)"
            ),
            lambda f: 0 < f.peak_pss_bytes < 1024 * MIB,
        ),
        (
            "peak calls in flight",
            "peak_in_flight",
            lambda f: f"{f.peak_in_flight:,}",
            lambda f: f.peak_in_flight >= min(1000, n),
        ),
        (
            "terminal / succeeded / failed",
            "terminal",
            lambda f: f"{f.terminal:,} / {f.statuses.get('succeeded', 0):,} / {f.statuses.get('failed', 0):,}",
            lambda f: f.terminal == f.jobs,
        ),
        ("stuck (not terminal at the end)", "stuck", lambda f: f"{f.stuck:,}", lambda f: f.stuck == 0),
        (
            "retryable failures left failed",
            "retryable_failed",
            lambda f: f"{f.retryable_failed:,}",
            lambda f: f.retryable_failed == 0,
        ),
        ("upstream attempts / calls billed", None, lambda f: f"{f.attempts:,} / {f.calls_billed:,}", None),
    ]
    if s.probe_after is not None:
        rows.append(
            (
                "tenant B job: queue wait (total)",
                "probe_wait",
                lambda f: f"{_num(f.probe_wait, '{:,.2f}', ' s')} ({_num(f.probe_total, '{:,.1f}', ' s')})",
                lambda f: f.probe_wait is not None and f.probe_wait < 2,
            )
        )
    return rows


def _cell(side: Side, value: Value, check: Check | None, *, first: bool) -> str:
    if side.skipped:
        return "not run" if first else ""
    if side.figures is None:
        return (f"error: {side.error}" if side.error else "n/a") if first else ""
    text = value(side.figures)
    if check is not None:
        text += f" {PASS if check(side.figures) else MISS}"
    return text


def table(s: Scenario, ours: Side, base: Side) -> str:
    targets = s.targets()
    lines = ["| metric | target | minimax-jobs | baseline |", "|---|---|---|---|"]
    for i, (label, key, value, check) in enumerate(_rows(s)):
        target = targets.get(key) if key else None
        verdict = check if target else None
        lines.append(
            f"| {label} | {target or ''} | {_cell(ours, value, verdict, first=i == 0)} "
            f"| {_cell(base, value, verdict, first=i == 0)} |"
        )
    return "\n".join(lines)


def section(s: Scenario, ours: Side, base: Side, when: datetime, *, load: tuple[float, float]) -> str:
    head = f"## {s.title} ({s.name}, {s.mode})"
    meta = (
        f"Measured {when:%Y-%m-%d %H:%M} UTC on {machine()}; 1-minute load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (anything above ~2 means other work shared these cores)."
    )
    work = f"Workload: {s.describe()}."
    notes = []
    for name, side in (("minimax-jobs", ours), ("baseline", base)):
        if side.figures and side.figures.extra.get("sim_outcomes"):
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(side.figures.extra["sim_outcomes"].items()))
            notes.append(f"Simulator outcomes, {name}: {outcomes}.")
    return "\n\n".join([head, meta, work, table(s, ours, base), *notes])


# A section: "<!-- section: KEY -->" ... "<!-- end -->" (ours) or "<!-- end KEY -->" (other benchmarks' own,
# e.g. benchmarks/intake.py): those are kept as they are, also by a run that rewrites every scenario.
_BLOCK = re.compile(r"<!-- section: (\S+) -->\n(.*?)<!-- end(?: \1)? -->\n?", re.S)
_HEADER = """# Benchmark results

The latest tables of `python -m benchmarks.run` (what each figure means: README.md). Targets are issue 3's, for
the full sizes; ✓ / ✗ say whether a side meets the target. Each section says when and where it was measured.
`python -m benchmarks.all` rewrites this file whole, from one commit, with one header saying which.
"""


def write_results(sections: dict[str, str], *, replace_all: bool) -> Path:
    """Replace the given scenario sections (key "name/mode") in RESULTS.md; with `replace_all`, drop every other
    scenario section too. Sections written by other benchmarks are kept verbatim."""
    order = [f"{n}/{m}" for m in ("full", "quick") for n in NAMES]
    ours: dict[str, str] = {}
    foreign: list[str] = []
    path = results_path()
    if path.exists():
        for m in _BLOCK.finditer(path.read_text()):
            if m.group(1) in order:
                if not replace_all:
                    ours[m.group(1)] = m.group(2).rstrip("\n")
            else:
                foreign.append(m.group(0).rstrip("\n"))
    ours.update(sections)
    keys = sorted(ours, key=order.index)
    body = "".join(f"\n<!-- section: {k} -->\n{ours[k]}\n<!-- end -->\n" for k in keys)
    body += "".join(f"\n{block}\n" for block in foreign)
    path.write_text(_HEADER + body)
    return path


def write_section(name: str, title: str, body: str) -> Path:
    """Replace (or append) the section of RESULTS.md (the one `results_path()` names) that runs from the line
    `<!-- section: NAME -->` to the line `<!-- end NAME -->`, holding `## TITLE` and BODY. The file is re-read
    just before writing; nothing else in it changes. Every benchmark module follows this pattern; benchmarks.all
    collects the sections by these markers."""
    path = results_path()
    start, end = f"<!-- section: {name} -->", f"<!-- end {name} -->"
    section = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def now() -> datetime:
    return datetime.now(UTC)
