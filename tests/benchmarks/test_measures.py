"""The benchmarks' own measures: the achieved rate over whole limiter windows, and where sections are written."""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.all import Bench, run_one, sections_of
from benchmarks.metrics import steady_rate
from benchmarks.report import DEFAULT_RESULTS


def _sliding_window_client(rpm: int, seconds: float, latency: tuple[float, float], *, burst: bool) -> list[float]:
    """Bill times of a client against a sliding-log limiter of `rpm`: it sends whenever the limiter admits (all of a
    minute's quota at once when `burst`, else evenly paced), each call billed after a latency in `latency`."""
    rng = random.Random(7)
    admitted: deque[float] = deque()
    bills = []
    t, step = 0.0, (0.001 if burst else 60 / rpm)
    while t < seconds:
        while admitted and admitted[0] <= t - 60:
            admitted.popleft()
        if len(admitted) < rpm:
            admitted.append(t)
            bills.append(t + rng.uniform(*latency))
        t += step
    return sorted(bills)


@pytest.mark.parametrize("seconds", [61.0, 100.0, 200.0, 301.0])
@pytest.mark.parametrize("burst", [True, False])
def test_no_client_exceeds_the_limit_over_whole_windows(seconds: float, burst: bool) -> None:
    latency = (1.5, 2.5)
    bills = _sliding_window_client(600, seconds, latency, burst=burst)
    rate = steady_rate([(b, 1) for b in bills], latency[1] - latency[0])
    assert rate is not None
    assert rate.rpm <= 600
    assert rate.windows == int((bills[-1] - bills[0]) // 60)


def test_the_busy_span_rate_a_burst_inflated_is_capped() -> None:
    # Two minutes' quota in 100 s: over the plain busy span, 120 % of the limit (the sceptic's "103.6 % of TPM").
    bills = _sliding_window_client(600, 100.0, (1.5, 2.5), burst=True)
    assert len(bills) * 60 / (bills[-1] - bills[0]) > 600
    rate = steady_rate([(b, 1) for b in bills], 1.0)
    assert rate is not None
    assert rate.rpm <= 600


def test_a_paced_client_scores_near_the_limit() -> None:
    bills = _sliding_window_client(600, 300.0, (1.5, 2.5), burst=False)
    rate = steady_rate([(b, 1) for b in bills], 1.0)
    assert rate is not None
    assert rate.windows >= 4
    assert rate.rpm >= 0.97 * 600


def test_less_than_one_window_is_not_a_rate() -> None:
    assert steady_rate([(0.0, 1), (30.0, 1)], 0.0) is None
    assert steady_rate([], 0.0) is None


def test_sections_go_where_the_environment_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "scratch.md"
    monkeypatch.setenv(report.RESULTS_ENV, str(target))
    report.write_section("alpha", "Alpha", "first")
    report.write_section("beta", "Beta", "second")
    report.write_section("alpha", "Alpha", "replaced")
    sections = sections_of(target.read_text())
    assert list(sections) == ["alpha", "beta"]
    assert "replaced" in sections["alpha"]
    assert "first" not in sections["alpha"]
    assert report.results_path() == target


def test_all_collects_a_benchmarks_section_from_the_scratch_file(tmp_path: Path) -> None:
    real_before = DEFAULT_RESULTS.read_bytes()
    bench = Bench("fake", "tests.benchmarks.fake_bench", "a stand-in", None, None)
    outcome = run_one(bench, quick=True, log_dir=tmp_path, scratch=tmp_path / "sections.md")
    assert outcome.status == "ok"
    assert list(outcome.sections) == ["fake"]
    assert "quick" in outcome.sections["fake"]
    assert DEFAULT_RESULTS.read_bytes() == real_before
    assert "fake ran" in (tmp_path / "fake" / "output.log").read_text()


def test_all_skips_a_benchmark_not_in_the_checkout(tmp_path: Path) -> None:
    bench = Bench("nope", "benchmarks.does_not_exist", "missing", None, None)
    outcome = run_one(bench, quick=False, log_dir=tmp_path, scratch=tmp_path / "sections.md")
    assert outcome.status.startswith("skipped")
    assert outcome.sections == {}


def test_a_file_not_committed_under_the_code_counts_as_dirty() -> None:
    probe = DEFAULT_RESULTS.parent / "_dirty_probe_for_tests.py"
    before = report.dirty_paths()
    probe.write_text("# not committed\n")
    try:
        assert "benchmarks/_dirty_probe_for_tests.py" in report.dirty_paths()
    finally:
        probe.unlink()
    assert report.dirty_paths() == before
