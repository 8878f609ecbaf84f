"""`python -m benchmarks.all [--quick] [--only NAME ...] [--log-dir DIR]`: every benchmark, one after the other,
from one commit, and RESULTS.md written whole with one header saying which commit, where and how long.

Each benchmark runs as a process of its own (`benchmarks.<module>.main(argv)`), with MMJOBS_BENCH_RESULTS pointing
at a scratch RESULTS file in the log directory: it writes its section(s) there (`<!-- section: NAME -->` ...
`<!-- end NAME -->`, benchmarks.report.write_section), and this driver assembles them. A benchmark that writes
benchmarks/RESULTS.md anyway is caught: its sections are taken from there and the file is put back. A benchmark
whose module is not in this checkout is skipped with a note.

It refuses to start when the code the benchmarks run (service/, workers/, simulator/, migrations/, benchmarks/,
pyproject.toml) differs from HEAD, and marks the file loudly if HEAD or the tree changed during the run
(`--allow-dirty` runs anyway and says so in the header). A full run of every benchmark writes
benchmarks/RESULTS.md; `--quick` or `--only` writes LOG_DIR/RESULTS.md unless `--output` says otherwise, so
indicative sizes or a partial run never pass for the results. `--estimate` prints the expected durations only.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks.report import DEFAULT_RESULTS, RESULTS_ENV, dirty_paths, git, machine, now
from benchmarks.scenarios import NAMES, build, expected_seconds

ROOT = Path(__file__).resolve().parent.parent
_SECTION = re.compile(r"<!-- section: (\S+) -->\n(.*?)<!-- end(?: \1)? -->\n?", re.S)


@dataclass(frozen=True)
class Bench:
    name: str
    module: str  # imported by name; its main(argv) runs the benchmark
    issue: str
    full_seconds: float | None  # expected duration (None: not known here)
    quick_seconds: float | None
    quick_args: tuple[str, ...] = ("--quick",)


def _scenario_seconds(quick: bool) -> float:
    return sum(expected_seconds(build(n, quick=quick)) for n in NAMES)


# In the order they run. Durations: measured on this 2-core machine (run, chaos, load, media; overhead, accounts and
# inflight in the full runs of c439263 and bc8a3cc) or estimated from the sizes (see README.md); None: not measured.
BENCHES = (
    Bench("run", "benchmarks.run", "issue 3: the five scenarios", _scenario_seconds(False), _scenario_seconds(True)),
    Bench("media", "benchmarks.media", "issue 6: memory under large payloads", 420, 150),
    Bench("load", "benchmarks.load", "issue 8: the API under load", 180, 90),
    Bench("chaos", "benchmarks.chaos.__main__", "issue 8: chaos", 1100, 600),
    Bench("intake", "benchmarks.intake", "batch intake", 300, 120),
    Bench("overhead", "benchmarks.overhead", "issue 17: overhead per job", 150, 90),
    Bench("accounts", "benchmarks.accounts", "issue 17: accounts", 720, None),
    Bench("inflight", "benchmarks.inflight", "issue 17: 10,000 in flight", 240, None),
)
BY_NAME = {b.name: b for b in BENCHES}


@dataclass
class Outcome:
    bench: Bench
    status: str  # "ok", "exit N", "skipped: why", "interrupted"
    seconds: float = 0.0
    sections: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _minutes(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 60:.0f} min"


def sections_of(text: str) -> dict[str, str]:
    """Every `<!-- section: NAME -->` block of a RESULTS file, markers included, by name."""
    return {m.group(1): m.group(0).rstrip("\n") for m in _SECTION.finditer(text)}


def available(bench: Bench) -> bool:
    try:
        return importlib.util.find_spec(bench.module) is not None
    except ModuleNotFoundError:
        return False


def run_one(bench: Bench, *, quick: bool, log_dir: Path, scratch: Path) -> Outcome:
    """Run one benchmark in a process of its own; its sections come from the scratch file (or, if it wrote
    benchmarks/RESULTS.md instead, from there, which is then put back as it was)."""
    if not available(bench):
        return Outcome(bench, f"skipped: {bench.module} is not in this checkout")
    bench_logs = log_dir / bench.name
    bench_logs.mkdir(parents=True, exist_ok=True)
    argv = [*(bench.quick_args if quick else ()), "--log-dir", str(bench_logs)]
    code = f"import sys; from {bench.module} import main; sys.exit(main(sys.argv[1:]))"
    before_scratch = scratch.read_text() if scratch.exists() else ""
    before_real = DEFAULT_RESULTS.read_bytes() if DEFAULT_RESULTS.exists() else None
    print(f"\n#### {bench.name}: python -m {bench.module} {' '.join(argv)}", flush=True)  # noqa: T201
    started = time.monotonic()
    env = {**os.environ, RESULTS_ENV: str(scratch)}
    with (bench_logs / "output.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-u", "-c", code, *argv],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                log.write(line)
            rc = proc.wait()
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)  # the benchmark unwinds and stops every process it started
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            raise
    outcome = Outcome(bench, "ok" if rc == 0 else f"exit {rc}", seconds=time.monotonic() - started)
    old = sections_of(before_scratch)
    outcome.sections = {k: v for k, v in sections_of(scratch.read_text() if scratch.exists() else "").items()
                        if old.get(k) != v}  # fmt: skip
    after_real = DEFAULT_RESULTS.read_bytes() if DEFAULT_RESULTS.exists() else None
    if after_real != before_real:
        stray = sections_of(after_real.decode() if after_real else "")
        kept = sections_of(before_real.decode() if before_real else "")
        for k, v in stray.items():
            if kept.get(k) != v and k not in outcome.sections:
                outcome.sections[k] = v
        outcome.notes.append(f"wrote benchmarks/RESULTS.md instead of ${RESULTS_ENV}; its sections taken from there")
        if before_real is None:
            DEFAULT_RESULTS.unlink(missing_ok=True)
        else:
            DEFAULT_RESULTS.write_bytes(before_real)
    if not outcome.sections:
        outcome.notes.append("wrote no section")
    return outcome


def header(
    outcomes: list[Outcome],
    *,
    quick: bool,
    partial: bool,
    commit: str,
    subject: str,
    problems: list[str],
    load: tuple[tuple[float, ...], tuple[float, ...]],
    started: float,
    when: str,
    command: str,
) -> str:
    size = "quick (indicative sizes: not results)" if quick else "full"
    lines = ["# Benchmark results", ""]
    if problems:
        lines += ["**NOT FROM ONE CLEAN COMMIT:** " + "; ".join(problems) + ".", ""]
    if quick:
        lines += ["**QUICK SIZES: indicative only; the targets are for the full sizes.**", ""]
    if partial:
        lines += ["**PARTIAL: only the benchmarks listed below ran.**", ""]
    lines += [
        f"Generated whole by `{command}` from commit `{commit}` ({subject}), started {when} UTC, "
        f"{(time.time() - started) / 60:.0f} minutes in all, on {machine().rsplit(', commit', 1)[0]}. Load "
        f"average (1, 5, 15 min) {' / '.join(f'{x:.1f}' for x in load[0])} before, "
        f"{' / '.join(f'{x:.1f}' for x in load[1])} after (2 cores: above ~2, other work shared them). "
        "What each figure means: README.md. Every section below was measured in this run; each says when.",
        "",
        "| benchmark | what | size | sections | took | outcome |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        names = ", ".join(f"`{k}`" for k in o.sections) or "none"
        status = o.status + "".join(f"; {n}" for n in o.notes)
        took = f"{o.seconds / 60:.1f} min" if o.seconds else ""
        lines.append(f"| {o.bench.name} | {o.bench.issue} | {size} | {names} | {took} | {status} |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.all", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every benchmark at its quick size (indicative)")
    p.add_argument("--only", action="append", choices=[b.name for b in BENCHES], help="run only this (repeatable)")
    p.add_argument("--log-dir", type=Path, help="where every log goes (default: a new directory in /tmp)")
    p.add_argument("--output", type=Path, help="the file to write (default: see above)")
    p.add_argument("--allow-dirty", action="store_true", help="run with uncommitted changes, and say so loudly")
    p.add_argument("--estimate", action="store_true", help="print the expected durations and exit")
    return p


def estimate(quick: bool, only: list[str] | None) -> str:
    rows, total, unknown = [], 0.0, []
    for b in BENCHES:
        if only and b.name not in only:
            continue
        seconds = b.quick_seconds if quick else b.full_seconds
        here = "" if available(b) else " (not in this checkout)"
        rows.append(f"  {b.name:12} {_minutes(seconds):>8}{here}")
        if seconds is None:
            unknown.append(b.name)
        else:
            total += seconds
    if not only or "run" in only:
        for n in NAMES:
            s = build(n, quick=quick)
            rows.append(f"    run/{n:20} {_minutes(expected_seconds(s)):>8}  ({s.describe().split(';')[0]})")
    rest = f" + {', '.join(unknown)} (unknown)" if unknown else ""
    return "\n".join(rows) + f"\n  total: about {_minutes(total)}{rest}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.estimate:
        print(estimate(args.quick, args.only))  # noqa: T201
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    problems: list[str] = []
    dirty = dirty_paths()
    if dirty:
        listed = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
        if not args.allow_dirty:
            print(f"refusing: uncommitted changes in {listed}; commit them (or --allow-dirty)", file=sys.stderr)  # noqa: T201
            return 2
        problems.append(f"uncommitted changes at the start ({listed})")
    commit, subject = git("rev-parse", "HEAD"), git("log", "-1", "--format=%s")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="mmjobs-bench-all-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    scratch = log_dir / "sections.md"
    scratch.unlink(missing_ok=True)
    partial = bool(args.only) or args.quick
    output = args.output or (log_dir / "RESULTS.md" if partial else DEFAULT_RESULTS)
    command = "python -m benchmarks.all" + (" --quick" if args.quick else "")
    command += "".join(f" --only {n}" for n in args.only or [])
    print(f"commit {commit[:12]}; logs in {log_dir}; writing {output} at the end", flush=True)  # noqa: T201
    print("expected:\n" + estimate(args.quick, args.only), flush=True)  # noqa: T201
    started, when, load_before = time.time(), f"{now():%Y-%m-%d %H:%M}", os.getloadavg()
    outcomes: list[Outcome] = []
    interrupted = False
    try:
        for bench in BENCHES:
            if args.only and bench.name not in args.only:
                continue
            outcomes.append(run_one(bench, quick=args.quick, log_dir=log_dir, scratch=scratch))
            print(f"#### {bench.name}: {outcomes[-1].status} ({outcomes[-1].seconds / 60:.1f} min)", flush=True)  # noqa: T201
    except KeyboardInterrupt:
        interrupted = True
        problems.append("interrupted before every benchmark ran")
    load_after = os.getloadavg()
    if git("rev-parse", "HEAD") != commit:
        problems.append(f"HEAD moved during the run (now {git('rev-parse', '--short', 'HEAD')})")
    if dirty_paths() and not dirty:
        problems.append("the code changed during the run (" + ", ".join(dirty_paths()[:10]) + ")")
    text = header(
        outcomes,
        quick=args.quick,
        partial=bool(args.only),
        commit=commit[:12],
        subject=subject,
        problems=problems,
        load=(load_before, load_after),
        started=started,
        when=when,
        command=command,
    )
    for o in outcomes:
        for body in o.sections.values():
            text += "\n" + body + "\n"
    output.write_text(text)
    print(f"\nwrote {output} ({sum(len(o.sections) for o in outcomes)} sections)")  # noqa: T201
    if interrupted:
        return 130
    return 0 if all(o.status == "ok" or o.status.startswith("skipped") for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
