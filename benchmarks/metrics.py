"""Figures: what one side of a scenario achieved, from per-job timings, the simulator and sampled memory (PSS).

Definitions (also in README.md):
- completion: from the first submission to the last job reaching a terminal state;
- ideal: max(N / RPM, tokens / TPM) minutes + the mean simulated latency (tokens as the simulator bills them);
- achieved RPM / TPM (a scenario with a limit): calls (tokens) the simulator billed within k whole limiter windows
  (60 s) from its first billed call, k = floor(billing span / 60 s), counting only calls billed before the end of
  the k windows minus the simulated latency spread, divided by k minutes (see `steady_rate`): under the
  simulator's sliding-window limit no client can exceed 100 % of RPM this way, whatever it bursts;
- queue wait: first start (claim) minus creation, per job;
- peak PSS: the largest sum, sampled every 0.5 s, of the PSS (proportional set size: each shared page divided
  among the processes sharing it) of every worker process and its children, so a prefork pool's pages shared
  with its parent are counted once, not once per child. Peak RSS is kept beside it for reference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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


class MemorySampler:
    """Samples the summed PSS (and RSS) of some processes and all their descendants every `interval` seconds.

    PSS (proportional set size, from /proc/PID/smaps_rollup via psutil's memory_full_info) charges each shared
    page to the processes sharing it in equal parts, so the sum over a family is what the family really holds:
    forked children (a prefork pool) do not count their parent's shared pages again. RSS counts every resident
    page in every process, shared or not; summed over forked children it over-counts, and is kept only for
    reference. The peak of each sum is kept separately."""

    def __init__(self, pids: Iterable[int], interval: float = 0.5) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak_pss = 0
        self.peak_rss = 0
        self.last_pss = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    # The name the report used before PSS; a peak of summed PSS now.
    @property
    def peak_bytes(self) -> int:
        return self.peak_pss

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def sample(self) -> None:
        pss = rss = count = 0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in family:
                try:
                    info = proc.memory_full_info()
                except psutil.Error:
                    continue
                pss += int(getattr(info, "pss", info.rss))
                rss += int(info.rss)
                count += 1
        self.last_pss = pss
        if pss > self.peak_pss:
            self.peak_pss = pss
            self.peak_processes = count
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


RssSampler = MemorySampler  # the old name, for callers not yet renamed


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
    billed: list[tuple[float, int]] = field(default_factory=list)  # (epoch seconds billed, tokens), per call


def sim_figures(sim_url: str) -> SimFigures:
    stats = httpx.get(sim_url + "/_sim/stats", timeout=30).json()
    ledger = httpx.get(sim_url + "/_sim/ledger", timeout=60).json()
    totals = ledger["totals"]
    billed = sorted(
        (datetime.fromisoformat(e["at"]).timestamp(), int(e["input_tokens"]) + int(e["output_tokens"]))
        for e in ledger.get("entries", [])
    )
    return SimFigures(
        calls_billed=int(totals["calls"]),
        tokens_billed=int(totals["input_tokens"]) + int(totals["output_tokens"]),
        rate_limited=int(stats["rate_limited"]),
        peak_in_flight=int(stats["peak_in_flight"]),
        by_outcome={str(k): int(v) for k, v in stats["by_outcome"].items()},
        billed=billed,
    )


WINDOW_SECONDS = 60.0  # the simulator's (and MiniMax's) limiter window
MIN_WINDOWS = 3  # a rate measured over fewer whole windows is indicative only


@dataclass(frozen=True)
class SteadyRate:
    """Calls and tokens per minute over whole limiter windows (see `steady_rate`)."""

    rpm: float
    tpm: float
    windows: int


def steady_rate(billed: Sequence[tuple[float, int]], latency_spread: float) -> SteadyRate | None:
    """Calls (tokens) billed per minute over k = floor(span / 60 s) whole windows from the first billed call.

    The simulator admits a call if fewer than RPM calls were admitted in the 60 s before it (a sliding log), so any
    k whole windows hold at most k x RPM admissions, and a client that bursts a full minute's quota at the start
    gains nothing over k windows. The ledger time is the bill (the call's end), which lags its admission by the
    call's latency, between lo and hi: calls billed in [T0, T0 + k x 60 s - (hi - lo)), T0 the first bill, were
    all admitted within k x 60 s of the first admission. Counting those and dividing by k minutes cannot exceed
    the RPM limit; a client running at exactly the limit scores 1 - spread / (60 k) (99.7 % for request_bound,
    98.7 % for token_bound). Tokens likewise, except that the simulator adds output tokens to the window when the
    call ends, without a check, so TPM can exceed the limit by the output of the calls in flight. None when the
    calls span less than one window."""
    if not billed:
        return None
    t0 = billed[0][0]
    windows = int((billed[-1][0] - t0) // WINDOW_SECONDS)
    if windows < 1:
        return None
    end = t0 + windows * WINDOW_SECONDS - max(0.0, latency_spread)
    calls = tokens = 0
    for at, n in billed:
        if at >= end:
            break
        calls += 1
        tokens += n
    return SteadyRate(rpm=calls / windows, tpm=tokens / windows, windows=windows)


@dataclass
class Figures:
    """One side's results; None means "not measured" (rendered as n/a)."""

    jobs: int
    submit_seconds: float
    completion_seconds: float | None
    ideal_seconds: float
    achieved_rpm: float | None
    achieved_tpm: float | None
    rate_windows: int | None  # whole limiter windows the rate was measured over; None: over the busy span
    upstream_429: int
    queue_wait_p50: float | None
    queue_wait_p99: float | None
    peak_pss_bytes: int
    peak_rss_bytes: int
    memory_processes: int
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
    memory: MemorySampler,
    attempts: int,
    submit_errors: int = 0,
    limited: bool = False,
    latency_spread: float = 0.0,
) -> Figures:
    """`limited`: the scenario has an RPM or TPM limit, so the achieved rates are measured over whole limiter
    windows (`steady_rate`); otherwise over the busy span (last job end - first start - mean latency)."""
    statuses: dict[str, int] = {}
    for t in timings:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    stuck = sum(n for status, n in statuses.items() if status not in TERMINAL)
    ends = [t.ended for t in timings if t.ended is not None and t.status in TERMINAL]
    starts = [t.started for t in timings if t.started is not None]
    completion = (max(ends) - submit_started) if ends and stuck == 0 else None
    achieved_rpm = achieved_tpm = None
    rate_windows: int | None = None
    if limited:
        steady = steady_rate(sim.billed, latency_spread)
        if steady is not None:
            achieved_rpm, achieved_tpm, rate_windows = steady.rpm, steady.tpm, steady.windows
    elif ends and starts:
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
        rate_windows=rate_windows,
        upstream_429=sim.rate_limited,
        queue_wait_p50=percentile(waits, 50),
        queue_wait_p99=percentile(waits, 99),
        peak_pss_bytes=memory.peak_pss,
        peak_rss_bytes=memory.peak_rss,
        memory_processes=memory.peak_processes,
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
