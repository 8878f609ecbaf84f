"""Figures: what one side of a scenario achieved, from per-job timings, the simulator and sampled RSS.

Definitions (also in README.md):
- completion: from the first submission to the last job reaching a terminal state;
- ideal: max(N / RPM, tokens / TPM) minutes + the mean simulated latency (tokens as the simulator bills them);
- achieved RPM / TPM: calls (tokens) the simulator billed, divided by the busy span = (last job end - first call
  start) - mean latency, i.e. the time over which calls were being admitted;
- queue wait: first start (claim) minus creation, per job;
- peak RSS: the largest sum, sampled every 0.5 s, of the RSS of every worker process and its children.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

TERMINAL = ("succeeded", "failed", "canceled", "expired")
MIB = 1024 * 1024


@dataclass(frozen=True)
class JobTiming:
    """One job as either side saw it. Times are epoch seconds; `started`/`ended` are None if it never ran."""

    tenant: str
    status: str
    created: float
    started: float | None
    ended: float | None
    attempts: int = 1
    retryable_failure: bool = False


class RssSampler:
    """Samples the summed RSS of some processes and all their descendants every `interval` seconds."""

    def __init__(self, pids: Iterable[int], interval: float = 0.5) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        total = 0
        count = 0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in family:
                try:
                    total += int(proc.memory_info().rss)
                    count += 1
                except psutil.Error:
                    continue
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_processes = count

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class SimFigures:
    calls_billed: int
    tokens_billed: int
    rate_limited: int
    peak_in_flight: int
    by_outcome: dict[str, int]


def sim_figures(sim_url: str) -> SimFigures:
    stats = httpx.get(sim_url + "/_sim/stats", timeout=30).json()
    totals = httpx.get(sim_url + "/_sim/ledger", timeout=60).json()["totals"]
    return SimFigures(
        calls_billed=int(totals["calls"]),
        tokens_billed=int(totals["input_tokens"]) + int(totals["output_tokens"]),
        rate_limited=int(stats["rate_limited"]),
        peak_in_flight=int(stats["peak_in_flight"]),
        by_outcome={str(k): int(v) for k, v in stats["by_outcome"].items()},
    )


@dataclass
class Figures:
    """One side's results; None means "not measured" (rendered as n/a)."""

    jobs: int
    submit_seconds: float
    completion_seconds: float | None
    ideal_seconds: float
    achieved_rpm: float | None
    achieved_tpm: float | None
    upstream_429: int
    queue_wait_p50: float | None
    queue_wait_p99: float | None
    peak_rss_bytes: int
    rss_processes: int
    peak_in_flight: int
    statuses: dict[str, int]
    stuck: int
    retryable_failed: int
    attempts: int
    calls_billed: int
    tokens_billed: int
    submit_errors: int = 0
    probe_wait: float | None = None
    probe_total: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> int:
        return sum(self.statuses.get(s, 0) for s in TERMINAL)


def compute(
    timings: Sequence[JobTiming],
    *,
    submit_started: float,
    submit_seconds: float,
    ideal_seconds: float,
    mean_latency: float,
    sim: SimFigures,
    rss: RssSampler,
    attempts: int,
    submit_errors: int = 0,
) -> Figures:
    statuses: dict[str, int] = {}
    for t in timings:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    stuck = sum(n for status, n in statuses.items() if status not in TERMINAL)
    ends = [t.ended for t in timings if t.ended is not None and t.status in TERMINAL]
    starts = [t.started for t in timings if t.started is not None]
    completion = (max(ends) - submit_started) if ends and stuck == 0 else None
    achieved_rpm = achieved_tpm = None
    if ends and starts:
        span = max(max(ends) - min(starts) - mean_latency, 1.0)
        achieved_rpm = sim.calls_billed * 60 / span
        achieved_tpm = sim.tokens_billed * 60 / span
    waits = [t.started - t.created for t in timings if t.started is not None and t.tenant != "b"]
    probe = next((t for t in timings if t.tenant == "b"), None)
    return Figures(
        jobs=len(timings),
        submit_seconds=submit_seconds,
        completion_seconds=completion,
        ideal_seconds=ideal_seconds,
        achieved_rpm=achieved_rpm,
        achieved_tpm=achieved_tpm,
        upstream_429=sim.rate_limited,
        queue_wait_p50=percentile(waits, 50),
        queue_wait_p99=percentile(waits, 99),
        peak_rss_bytes=rss.peak_bytes,
        rss_processes=rss.peak_processes,
        peak_in_flight=sim.peak_in_flight,
        statuses=statuses,
        stuck=stuck,
        retryable_failed=sum(1 for t in timings if t.status == "failed" and t.retryable_failure),
        attempts=attempts,
        calls_billed=sim.calls_billed,
        tokens_billed=sim.tokens_billed,
        submit_errors=submit_errors,
        probe_wait=probe.started - probe.created if probe and probe.started is not None else None,
        probe_total=probe.ended - probe.created if probe and probe.ended is not None else None,
        extra={"sim_outcomes": sim.by_outcome},
    )
