"""The shared rate limiter against a real Redis (database 12): limits hold in every window under concurrency,
throughput stays near the limit, waits are exact, reservations settle, tenants are capped, the rate adapts."""

from __future__ import annotations

import heapq
import math
import multiprocessing
import random
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.db import redis_url
from workers.limiter import AdaptivePolicy, Limits, RateLimiter, parse_rate_limits

REDIS_DB = 12
Grant = tuple[float, int]  # (limiter time of the grant, tokens reserved)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url(REDIS_DB))
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


@pytest.fixture
def limiter(client: redis.Redis) -> RateLimiter:
    return RateLimiter(client)


def assert_every_window_within(grants: list[Grant], *, window: float, rpm: int, tpm: int) -> None:
    """Every window (x - window, x] ending at a grant holds at most rpm requests and tpm tokens. The fullest
    window always ends at a grant, so checking those is checking them all."""
    grants = sorted(grants)
    start, tokens = 0, 0
    for end, (at, n) in enumerate(grants):
        tokens += n
        while grants[start][0] <= at - window:
            tokens -= grants[start][1]
            start += 1
        assert end - start + 1 <= rpm, f"{end - start + 1} requests in the window ending at {at}"
        assert tokens <= tpm, f"{tokens} tokens in the window ending at {at}"


# Concurrency: many acquirers, one limit ----------------------------------------------------------------------

# A one-second window on the real Redis clock lets the window slide several times within a fast test.
REAL_WINDOW, REAL_RPM, REAL_TPM = 1.0, 40, 4000


def _acquire_slot(limiter: RateLimiter, permit: str, now: float, tenant_limits: Limits) -> tuple[bool, str | None]:
    """One request of tenant `a` on model `m` (no model limits), holding a concurrency slot for 30 s."""
    d = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=Limits(), tenant_limits=tenant_limits,
                        permit_id=permit, hold_seconds=30, now=now)  # fmt: skip
    return d.granted, d.reason


def _hammer(limiter: RateLimiter, *, until: float, seed: int) -> list[Grant]:
    rng = random.Random(seed)
    grants: list[Grant] = []
    while time.time() < until:
        tokens = rng.randint(10, 200)  # 40 requests average ~4200 tokens: both limits bind in turn
        decision = limiter.acquire(
            model="MiniMax-M2.7",
            tenant=f"tenant-{rng.randint(0, 3)}",
            tokens=tokens,
            model_limits=Limits(rpm=REAL_RPM, tpm=REAL_TPM),
        )
        if decision.granted:
            grants.append((decision.at, tokens))
        else:
            time.sleep(min(decision.retry_after, 0.005))
    return grants


def _process_hammer(args: tuple[float, int]) -> list[Grant]:
    until, seed = args
    client = redis.Redis.from_url(redis_url(REDIS_DB))
    try:
        return _hammer(RateLimiter(client, window_seconds=REAL_WINDOW), until=until, seed=seed)
    finally:
        client.close()


def test_threads_never_exceed_the_limits_in_any_window(client: redis.Redis) -> None:
    limiter = RateLimiter(client, window_seconds=REAL_WINDOW)
    until = time.time() + 2.2
    results: list[list[Grant]] = [[] for _ in range(8)]

    def run(i: int) -> None:
        results[i] = _hammer(limiter, until=until, seed=i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grants = [g for r in results for g in r]
    assert_every_window_within(grants, window=REAL_WINDOW, rpm=REAL_RPM, tpm=REAL_TPM)
    # The window slid at least twice, and the limiter still admitted close to the limit.
    assert len(grants) > 2 * REAL_RPM * 0.8
    assert sum(1 for r in results if r) >= 4  # many threads won grants, not one


def test_processes_never_exceed_the_limits_in_any_window(client: redis.Redis) -> None:
    until = time.time() + 2.5
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_process_hammer, [(until, seed) for seed in (11, 12, 13)])
    grants = [g for r in results for g in r]
    assert_every_window_within(grants, window=REAL_WINDOW, rpm=REAL_RPM, tpm=REAL_TPM)
    assert len(grants) > 2 * REAL_RPM * 0.8
    assert all(results), "every process won some grants"


# Throughput -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "low", "high", "bound"),
    [
        (Limits(rpm=100, tpm=10_000_000), 1, 50, "requests"),
        (Limits(rpm=10_000, tpm=50_000), 200, 800, "tokens"),
    ],
    ids=["rpm-bound", "tpm-bound"],
)
def test_a_backlogged_stream_reaches_97_percent_of_the_limit(
    limiter: RateLimiter, limits: Limits, low: int, high: int, bound: str
) -> None:
    """Ten clients always have a request waiting and retry exactly when told; over five simulated minutes
    the binding limit is used at >= 97 % after the first minute, and never exceeded in any window."""
    rng = random.Random(5)
    clients = 10
    queue = [(rng.uniform(0, 1), i) for i in range(clients)]
    heapq.heapify(queue)
    pending = {i: rng.randint(low, high) for i in range(clients)}
    grants: list[Grant] = []
    while queue:
        now, i = heapq.heappop(queue)
        if now >= 300:
            continue
        decision = limiter.acquire(
            model="MiniMax-M2.7", tenant=f"t{i % 3}", tokens=pending[i], model_limits=limits, now=now
        )
        if decision.granted:
            grants.append((now, pending[i]))
            pending[i] = rng.randint(low, high)
            heapq.heappush(queue, (now + rng.uniform(0.0, 2.0), i))
        else:
            assert math.isfinite(decision.retry_after)
            heapq.heappush(queue, (now + decision.retry_after, i))
    assert limits.rpm is not None
    assert limits.tpm is not None
    assert_every_window_within(grants, window=60, rpm=limits.rpm, tpm=limits.tpm)
    later = [n for at, n in grants if at >= 60]
    achieved = len(later) if bound == "requests" else sum(later)
    limit = limits.rpm if bound == "requests" else limits.tpm
    assert achieved >= 0.97 * 4 * limit


# retry_after ------------------------------------------------------------------------------------------------


def test_waiting_retry_after_is_exactly_enough_for_requests(limiter: RateLimiter) -> None:
    limits = Limits(rpm=3)
    for t in (0.0, 10.0, 20.0):
        assert limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=t).granted
    denied = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=30.3)
    assert (denied.granted, denied.reason) == (False, "rpm")
    assert denied.retry_after == pytest.approx(29.7, abs=0.003)  # the entry of t=0 leaves at 60
    early = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=30.3 + denied.retry_after - 0.01)
    assert not early.granted
    assert limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=30.3 + denied.retry_after).granted


def test_waiting_retry_after_is_exactly_enough_for_tokens(limiter: RateLimiter) -> None:
    limits = Limits(tpm=1000)
    for t, n in ((0.0, 400), (7.1, 100), (10.0, 400)):
        assert limiter.acquire(model="m", tenant="a", tokens=n, model_limits=limits, now=t).granted
    # 900 used; 600 more need 500 freed: the entries of t=0 (400) and t=7.1 (100) must both leave.
    denied = limiter.acquire(model="m", tenant="a", tokens=600, model_limits=limits, now=20.0)
    assert (denied.granted, denied.reason) == (False, "tpm")
    assert denied.retry_after == pytest.approx(47.1, abs=0.003)
    assert not limiter.acquire(
        model="m", tenant="a", tokens=600, model_limits=limits, now=20 + denied.retry_after - 0.01
    ).granted
    assert limiter.acquire(model="m", tenant="a", tokens=600, model_limits=limits, now=20 + denied.retry_after).granted


def test_retry_after_waits_for_the_slowest_dimension(limiter: RateLimiter) -> None:
    model_limits, tenant_limits = Limits(rpm=1), Limits(rpm=1)
    assert limiter.acquire(model="A", tenant="y", tokens=1, model_limits=model_limits, now=0).granted
    assert limiter.acquire(
        model="B", tenant="x", tokens=1, model_limits=model_limits, tenant_limits=tenant_limits, now=30
    ).granted
    # Model A is free at 60, tenant x only at 90.
    denied = limiter.acquire(
        model="A", tenant="x", tokens=1, model_limits=model_limits, tenant_limits=tenant_limits, now=40
    )
    assert denied.reason == "tenant_rpm"
    assert denied.retry_after == pytest.approx(50, abs=0.003)
    assert limiter.acquire(
        model="A",
        tenant="x",
        tokens=1,
        model_limits=model_limits,
        tenant_limits=tenant_limits,
        now=40 + denied.retry_after,
    ).granted


def test_a_request_larger_than_tpm_is_refused_for_ever(limiter: RateLimiter) -> None:
    decision = limiter.acquire(model="m", tenant="a", tokens=1001, model_limits=Limits(tpm=1000), now=0)
    assert (decision.granted, decision.reason, decision.retry_after) == (False, "tpm", math.inf)
    decision = limiter.acquire(
        model="m", tenant="a", tokens=501, model_limits=Limits(tpm=1000), tenant_limits=Limits(tpm=500), now=0
    )
    assert (decision.granted, decision.reason, decision.retry_after) == (False, "tenant_tpm", math.inf)
    # Exactly the limit fits.
    assert limiter.acquire(model="m", tenant="a", tokens=1000, model_limits=Limits(tpm=1000), now=0).granted


# Reservations -----------------------------------------------------------------------------------------------


def test_settle_replaces_the_reservation_with_the_real_usage(limiter: RateLimiter) -> None:
    limits = Limits(tpm=10_000)
    grant = limiter.acquire(model="m", tenant="a", tokens=10_000, model_limits=limits, now=0)
    assert grant.granted
    assert limiter.snapshot("m", model_limits=limits, now=1)["used"] == {"requests": 1, "tokens": 10_000}
    limiter.settle(grant.permit_id, model="m", tenant="a", input_tokens=3000, output_tokens=500, now=5)
    assert limiter.snapshot("m", model_limits=limits, now=5)["used"]["tokens"] == 3500
    assert limiter.tenant_snapshot("a", tenant_limits=Limits(), now=5)["used"]["tokens"] == 3500
    # A second settle (a retried task) changes nothing.
    limiter.settle(grant.permit_id, model="m", tenant="a", input_tokens=9000, output_tokens=900, now=6)
    assert limiter.snapshot("m", model_limits=limits, now=6)["used"]["tokens"] == 3500
    # The freed room is usable at once, to the token.
    assert limiter.acquire(model="m", tenant="b", tokens=6500, model_limits=limits, now=7).granted
    assert limiter.acquire(model="m", tenant="b", tokens=1, model_limits=limits, now=7).reason == "tpm"
    # Input stays at the admission time (leaves at 60), output at the settle time (leaves at 65).
    assert limiter.snapshot("m", model_limits=limits, now=60)["used"] == {"requests": 1, "tokens": 6500 + 500}
    assert limiter.snapshot("m", model_limits=limits, now=67.5)["used"] == {"requests": 0, "tokens": 0}


def test_an_unsettled_reservation_holds_until_it_leaves_the_window(limiter: RateLimiter) -> None:
    limits = Limits(tpm=10_000)
    assert limiter.acquire(model="m", tenant="a", tokens=10_000, model_limits=limits, now=0).granted
    denied = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=59.9)
    assert denied.reason == "tpm"
    assert denied.retry_after == pytest.approx(0.1, abs=0.003)
    assert limiter.snapshot("m", model_limits=limits, now=60)["used"]["tokens"] == 0
    assert limiter.acquire(model="m", tenant="a", tokens=10_000, model_limits=limits, now=60).granted


def test_settling_a_call_longer_than_the_window_counts_only_its_output(limiter: RateLimiter) -> None:
    limits = Limits(tpm=100_000)
    grant = limiter.acquire(model="m", tenant="a", tokens=10_000, model_limits=limits, now=0)
    limiter.settle(grant.permit_id, model="m", tenant="a", input_tokens=3000, output_tokens=500, now=90)
    assert limiter.snapshot("m", model_limits=limits, now=90)["used"] == {"requests": 0, "tokens": 500}


def test_acquiring_again_with_a_granted_permit_id_consumes_nothing(limiter: RateLimiter) -> None:
    limits = Limits(rpm=1)
    first = limiter.acquire(model="m", tenant="a", tokens=5, model_limits=limits, permit_id="p1", now=0)
    again = limiter.acquire(model="m", tenant="a", tokens=5, model_limits=limits, permit_id="p1", now=1)
    assert first.granted
    assert again.granted
    assert again.at == 0
    assert limiter.snapshot("m", model_limits=limits, now=1)["used"] == {"requests": 1, "tokens": 5}
    assert limiter.acquire(model="m", tenant="a", tokens=5, model_limits=limits, now=1).reason == "rpm"


def test_a_regrant_of_a_released_permit_still_respects_tenant_concurrency(limiter: RateLimiter) -> None:
    """The idempotent re-grant (same permit id, still in the window) must not hand out a concurrency slot the
    tenant does not have: p1 was released and two others now hold both slots."""
    model_limits, tenant_limits = Limits(), Limits(concurrency=2)

    def acquire(permit: str, now: float) -> tuple[bool, str | None]:
        return _acquire_slot(limiter, permit, now, tenant_limits)

    assert acquire("p1", 0) == (True, None)
    limiter.release("p1", tenant="a")
    assert acquire("p2", 1) == (True, None)
    assert acquire("p3", 1) == (True, None)
    assert acquire("p1", 2) == (False, "tenant_concurrency")  # re-sent: no free slot, so no grant
    limiter.release("p2", tenant="a")
    assert acquire("p1", 3) == (True, None)  # a slot is free again: granted, and it takes the slot
    assert limiter.tenant_snapshot("a", tenant_limits=tenant_limits, now=3)["used"]["in_flight"] == 2
    assert acquire("p4", 3) == (False, "tenant_concurrency")
    # Still one request in the window for p1: the re-grant consumed no new rate.
    assert limiter.snapshot("m", model_limits=model_limits, now=3)["used"]["requests"] == 3


def test_a_forfeited_permit_frees_its_request_tokens_and_slot_at_once(limiter: RateLimiter) -> None:
    """A claim that missed (the job was canceled before a worker took it) gives the whole grant back."""
    model_limits, tenant_limits = Limits(rpm=1, tpm=1000), Limits(concurrency=1)
    grant = limiter.acquire(model="m", tenant="a", tokens=800, model_limits=model_limits,
                            tenant_limits=tenant_limits, permit_id="job_1:1", now=0)  # fmt: skip
    assert grant.granted
    refused = limiter.acquire(model="m", tenant="a", tokens=800, model_limits=model_limits,
                              tenant_limits=tenant_limits, now=1)  # fmt: skip
    assert not refused.granted

    limiter.forfeit("job_1:1", model="m", tenant="a")
    limiter.forfeit("job_1:1", model="m", tenant="a")  # twice is harmless

    assert limiter.snapshot("m", model_limits=model_limits, now=1)["used"] == {"requests": 0, "tokens": 0}
    tenant = limiter.tenant_snapshot("a", tenant_limits=tenant_limits, now=1)["used"]
    assert tenant == {"requests": 0, "tokens": 0, "in_flight": 0}
    assert limiter.acquire(model="m", tenant="a", tokens=1000, model_limits=model_limits,
                           tenant_limits=tenant_limits, now=1).granted  # fmt: skip


# Tenants ----------------------------------------------------------------------------------------------------


def test_tenant_rpm_and_tpm_cap_one_tenant_only(limiter: RateLimiter) -> None:
    model_limits = Limits(rpm=100, tpm=100_000)
    tenant_limits = Limits(rpm=2, tpm=1000)
    for _ in range(2):
        assert limiter.acquire(
            model="m", tenant="a", tokens=100, model_limits=model_limits, tenant_limits=tenant_limits, now=0
        ).granted
    assert (
        limiter.acquire(
            model="m", tenant="a", tokens=100, model_limits=model_limits, tenant_limits=tenant_limits, now=1
        ).reason
        == "tenant_rpm"
    )
    assert limiter.acquire(
        model="m", tenant="b", tokens=900, model_limits=model_limits, tenant_limits=tenant_limits, now=1
    ).granted
    assert (
        limiter.acquire(
            model="m", tenant="b", tokens=101, model_limits=model_limits, tenant_limits=tenant_limits, now=1
        ).reason
        == "tenant_tpm"
    )
    # Tenant limits span models.
    assert (
        limiter.acquire(
            model="other", tenant="a", tokens=1, model_limits=model_limits, tenant_limits=tenant_limits, now=2
        ).reason
        == "tenant_rpm"
    )


def test_a_refusal_on_one_dimension_consumes_nothing_on_the_others(limiter: RateLimiter) -> None:
    model_limits = Limits(rpm=2, tpm=10_000)
    tenant_limits = Limits(rpm=1, concurrency=5)
    assert limiter.acquire(
        model="m", tenant="a", tokens=100, model_limits=model_limits, tenant_limits=tenant_limits, now=0
    ).granted
    refused = limiter.acquire(
        model="m", tenant="a", tokens=200, model_limits=model_limits, tenant_limits=tenant_limits, now=1
    )
    assert refused.reason == "tenant_rpm"
    assert limiter.snapshot("m", model_limits=model_limits, now=1)["used"] == {"requests": 1, "tokens": 100}
    assert limiter.acquire(model="m", tenant="b", tokens=1, model_limits=model_limits, now=2).granted
    # Now the model is full: a refusal there leaves tenant c untouched, slot and log alike.
    refused = limiter.acquire(
        model="m", tenant="c", tokens=300, model_limits=model_limits, tenant_limits=tenant_limits, now=3
    )
    assert refused.reason == "rpm"
    assert limiter.tenant_snapshot("c", tenant_limits=tenant_limits, now=3)["used"] == {
        "requests": 0,
        "tokens": 0,
        "in_flight": 0,
    }


def test_concurrency_cap_release_lease_expiry_and_extend(limiter: RateLimiter) -> None:
    model_limits, tenant_limits = Limits(), Limits(concurrency=2)

    def acquire(now: float) -> tuple[bool, str | None, float, str]:
        d = limiter.acquire(
            model="m",
            tenant="a",
            tokens=1,
            model_limits=model_limits,
            tenant_limits=tenant_limits,
            hold_seconds=30,
            now=now,
        )
        return d.granted, d.reason, d.retry_after, d.permit_id

    p1, p2 = acquire(0)[3], acquire(0)[3]
    granted, reason, retry_after, _ = acquire(1)
    assert (granted, reason) == (False, "tenant_concurrency")
    assert 0 < retry_after <= 1.01  # a release may come any moment: poll, do not sleep out the lease
    limiter.release(p1, tenant="a")
    limiter.release(p1, tenant="a")  # twice is harmless
    granted, _, _, p3 = acquire(1)
    assert granted
    assert acquire(2)[1] == "tenant_concurrency"
    # p2's holder crashed: its lease (0 + 30) lapses and the slot comes back without a release.
    assert not acquire(29.9)[0]
    granted, _, _, p4 = acquire(30)
    assert granted
    # p3 (expiring at 31) is still streaming: extend keeps its slot.
    assert limiter.extend(p3, tenant="a", hold_seconds=30, now=20)
    assert acquire(40)[1] == "tenant_concurrency"
    assert limiter.tenant_snapshot("a", tenant_limits=tenant_limits, now=40)["used"]["in_flight"] == 2
    assert acquire(50)[0]  # p3's extended lease lapsed at 50
    assert not limiter.extend(p2, tenant="a", hold_seconds=30, now=50)  # lapsed long ago: not revived
    assert not limiter.extend(p1, tenant="a", hold_seconds=30, now=50)  # released: not revived
    del p4


# Adaptive ---------------------------------------------------------------------------------------------------


def test_penalties_lower_the_rate_and_it_recovers_gradually(limiter: RateLimiter) -> None:
    limits = Limits(rpm=100, tpm=1_000_000)

    def effective(now: float) -> dict[str, int]:
        snap: dict[str, int] = limiter.snapshot("m", model_limits=limits, now=now)["effective"]
        return snap

    assert effective(0) == {"rpm": 100, "tpm": 1_000_000}
    limiter.penalize("m", now=100)
    assert effective(100) == {"rpm": 80, "tpm": 800_000}
    # A burst of 429s from calls already in flight counts once.
    for t in (100.2, 100.5, 101, 101.9):
        limiter.penalize("m", now=t)
    snap = limiter.snapshot("m", model_limits=limits, now=101.9)
    assert snap["penalized_at"] == 100
    assert snap["effective"]["rpm"] == 80  # 0.8 + 0.005 * 1.9 = 0.8095
    # Past the cooldown it counts again, from the partly recovered rate: (0.8 + 0.0125) * 0.8 = 0.65.
    limiter.penalize("m", now=102.5)
    assert effective(102.5) == {"rpm": 65, "tpm": 650_000}
    # +5 % of configured per 10 s, back to the configured value and no further.
    assert effective(112.5) == {"rpm": 70, "tpm": 700_000}
    assert effective(152.5) == {"rpm": 90, "tpm": 900_000}
    assert effective(172.5) == {"rpm": 100, "tpm": 1_000_000}
    assert effective(1000) == {"rpm": 100, "tpm": 1_000_000}


def test_penalties_never_go_below_the_floor(limiter: RateLimiter) -> None:
    limits = Limits(rpm=100, tpm=1_000_000)
    for i in range(40):
        limiter.penalize("m", now=3.0 * i)
    snap = limiter.snapshot("m", model_limits=limits, now=117)
    assert snap["effective"] == {"rpm": 10, "tpm": 100_000}
    assert snap["factor"] == pytest.approx(0.1)


def test_admission_follows_the_effective_rate(limiter: RateLimiter) -> None:
    limits = Limits(rpm=100, tpm=1000)
    limiter.penalize("m", now=0)
    granted = [limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=0).granted for _ in range(100)]
    assert sum(granted) == 80
    # Another model of the same account is not slowed down.
    assert limiter.snapshot("other", model_limits=limits, now=0)["effective"] == {"rpm": 100, "tpm": 1000}


def test_a_request_too_big_for_the_lowered_rate_waits_for_recovery(client: redis.Redis) -> None:
    limiter = RateLimiter(client, adaptive=AdaptivePolicy(decrease=0.5))
    limits = Limits(tpm=1000)
    limiter.penalize("m", now=0)  # effective tpm 500
    denied = limiter.acquire(model="m", tenant="a", tokens=700, model_limits=limits, now=0)
    assert denied.reason == "tpm"
    assert denied.retry_after == pytest.approx(40, abs=0.01)  # 0.5 -> 0.7 at 0.005 per second
    assert limiter.acquire(model="m", tenant="a", tokens=700, model_limits=limits, now=denied.retry_after).granted


def test_accounts_and_odd_names_never_share_keys(client: redis.Redis) -> None:
    limits = Limits(rpm=1)
    first, second = RateLimiter(client, account="acct-1"), RateLimiter(client, account="acct-2")
    assert first.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=0).granted
    assert second.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=0).granted
    assert first.acquire(model="m", tenant="a", tokens=1, model_limits=limits, now=0).reason == "rpm"
    # "a:b" + "c" and "a" + "b:c" must not collide.
    odd = RateLimiter(client, account="a:b")
    other = RateLimiter(client, account="a")
    assert odd.acquire(model="c", tenant="t", tokens=1, model_limits=limits, now=0).granted
    assert other.acquire(model="b:c", tenant="t", tokens=1, model_limits=limits, now=0).granted


def test_real_clock_when_now_is_not_given(limiter: RateLimiter) -> None:
    limits = Limits(rpm=1)
    grant = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits)
    assert grant.granted
    assert abs(grant.at - time.time()) < 5
    denied = limiter.acquire(model="m", tenant="a", tokens=1, model_limits=limits)
    assert denied.reason == "rpm"
    assert 59 < denied.retry_after <= 60.01


# Settings ---------------------------------------------------------------------------------------------------


def test_parse_rate_limits_reads_the_setting() -> None:
    parsed = parse_rate_limits('{"MiniMax-M2.7": {"rpm": 600, "tpm": 20000000}, "MiniMax-M3": {"tpm": null}}')
    assert parsed == {"MiniMax-M2.7": Limits(rpm=600, tpm=20_000_000), "MiniMax-M3": Limits()}
    assert parse_rate_limits("  ") == {}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("{not json", ["not valid JSON"]),
        ("[1, 2]", ["JSON object"]),
        ('{"MiniMax-M3": 500}', ["MiniMax-M3", "object"]),
        ('{"MiniMax-M3": {"rpm": 0}}', ["MiniMax-M3", "'rpm'", "positive integer"]),
        ('{"MiniMax-M3": {"tpm": -5}}', ["MiniMax-M3", "'tpm'"]),
        ('{"MiniMax-M3": {"tpm": 1.5}}', ["MiniMax-M3", "'tpm'"]),
        ('{"MiniMax-M3": {"rpm": "600"}}', ["MiniMax-M3", "'rpm'"]),
        ('{"MiniMax-M3": {"rpm": true}}', ["MiniMax-M3", "'rpm'"]),
        ('{"MiniMax-M3": {"rmp": 600}}', ["MiniMax-M3", "unknown field 'rmp'"]),
    ],
)
def test_parse_rate_limits_names_what_is_wrong(text: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError, match="MMJOBS_RATE_LIMITS") as info:
        parse_rate_limits(text)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_limits_refuse_non_positive_values() -> None:
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)
    with pytest.raises(ValueError, match="concurrency"):
        Limits(concurrency=-1)


def test_mark_sent_moves_a_grant_later_in_the_window(client: redis.Redis) -> None:
    """A call that waited after its grant counts from when it was sent, so the window frees it no earlier."""
    rl = RateLimiter(client, account="sent", window_seconds=60)
    limits = Limits(rpm=1)
    assert rl.acquire(model="m", tenant="t", tokens=1, model_limits=limits, permit_id="p1", now=1000.0).granted
    rl.mark_sent("p1", model="m", tenant="t", now=1005.0)
    # Without the stamp the slot would free at 1060; the call reached MiniMax at 1005, so it frees at 1065.
    assert not rl.acquire(model="m", tenant="t", tokens=1, model_limits=limits, permit_id="p2", now=1062.0).granted
    assert rl.acquire(model="m", tenant="t", tokens=1, model_limits=limits, permit_id="p3", now=1065.5).granted
    # A stamp never moves an entry earlier.
    rl.mark_sent("p3", model="m", tenant="t", now=1001.0)
    assert not rl.acquire(model="m", tenant="t", tokens=1, model_limits=limits, permit_id="p4", now=1100.0).granted


def test_extend_many_keeps_every_slot_a_long_call_holds(limiter: RateLimiter) -> None:
    """The lease keeper extends all of a process's permits in a few pipelined round trips (issue 17.3): each slot is
    kept as `extend` keeps it, across tenants and more permits than one pipeline chunk, and none is revived."""
    tenant_limits = Limits(concurrency=3)
    held: list[tuple[str, str]] = []
    for tenant in ("a", "b"):
        for _ in range(3):
            d = limiter.acquire(
                model="m", tenant=tenant, tokens=1, model_limits=Limits(), tenant_limits=tenant_limits,
                hold_seconds=30, now=0,
            )  # fmt: skip
            assert d.granted
            held.append((d.permit_id, tenant))
    released = held.pop()
    limiter.release(released[0], tenant=released[1])

    limiter.extend_many([*held, released], hold_seconds=30, now=20, chunk=2)

    def full(tenant: str, now: float) -> bool:
        d = limiter.acquire(
            model="m", tenant=tenant, tokens=1, model_limits=Limits(), tenant_limits=tenant_limits, now=now
        )
        if d.granted:
            limiter.release(d.permit_id, tenant=tenant)
        return d.reason == "tenant_concurrency"

    assert full("a", 40)  # past the first lease (30): the extended slots still hold
    assert not full("b", 40)  # b's released permit was not revived: one slot free
    assert not full("a", 50.5)  # the extension (20 + 30) lapsed


def test_settling_with_release_frees_the_tenant_slot_even_when_settled_before(limiter: RateLimiter) -> None:
    """The worker settles and frees a finished call's slot in one round trip: the slot is free at once, and a
    second settle (a retried finish: the marker says "settled already") still frees it; without `release` the
    slot stays held until it is released or lapses."""
    tenant_limits = Limits(concurrency=1)

    def acquire(permit: str, now: float) -> tuple[bool, str | None]:
        return _acquire_slot(limiter, permit, now, tenant_limits)

    assert acquire("p1", 0) == (True, None)
    limiter.settle("p1", model="m", tenant="a", input_tokens=1, output_tokens=1, now=1)
    assert acquire("p2", 1) == (False, "tenant_concurrency")  # settled, not released: still held
    limiter.settle("p1", model="m", tenant="a", input_tokens=1, output_tokens=1, now=2, release=True)
    assert acquire("p2", 2) == (True, None)
    limiter.settle("p2", model="m", tenant="a", input_tokens=1, output_tokens=1, now=3)
    limiter.settle("p2", model="m", tenant="a", input_tokens=1, output_tokens=1, now=3, release=True)
    assert limiter.tenant_snapshot("a", tenant_limits=tenant_limits, now=3)["used"]["in_flight"] == 0
