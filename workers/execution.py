"""Running one job: claim it under a lease, call MiniMax, decide on a retry, record the attempt and the outcome,
and settle the rate-limit permit it ran under."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import redis
from sqlalchemy import exc as sa_exc

from service.db import transaction, utcnow
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.observability import logging as obs_logging
from service.observability import worker as worker_metrics
from workers import media, preflight
from workers.dispatcher import permit_id
from workers.providers import Completion, UpstreamError, Usage, get_provider
from workers.retry import slows_the_limiter
from workers.runtime import InFlight, JobAborted, Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")


def _usage(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {}
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }


def success(completion: Completion) -> Outcome:
    usage = _usage(completion.usage)
    return Outcome(
        classification="succeeded",
        http_status=200,
        upstream_request_id=completion.request_id,
        usage=usage,
        result={
            "content": completion.content,
            "text": completion.text,
            "stop_reason": completion.stop_reason,
            "usage": usage,
            "upstream_request_id": completion.request_id,
            "raw": completion.raw,
        },
    )


def failure(error: UpstreamError) -> Outcome:
    return Outcome(
        classification=error.classification.value,
        http_status=error.http_status,
        minimax_code=error.minimax_code,
        error_type=error.error_type,
        error_message=error.message,
        upstream_request_id=error.request_id,
        usage=_usage(error.usage),
    )


def call_upstream(claim: Claim, rt: Runtime, handle: InFlight) -> tuple[Outcome, UpstreamError | None]:
    try:
        claim = media.prepare(claim, rt)  # mmjobs_file:// -> mm_file:// (uploaded once) or inline (issue 6)
        preflight.check(claim, rt)  # near M3's window: count_tokens first, fail early with the figure (issue 6)
        _mark_sent(claim, rt)
        completion = get_provider(claim.format).call(
            client=rt.http,
            base_url=rt.settings.minimax_base_url,
            api_key=rt.api_key,
            model=claim.model,
            params=claim.params,
            stream=rt.settings.stream,
            on_progress=handle.progress,
        )
        return success(completion), None
    except UpstreamError as error:
        return failure(error), error
    except JobAborted:
        outcome = Outcome(
            classification="canceled",
            error_type="aborted",
            error_message="the call was stopped: the job was canceled or handed to another worker",
        )
        return outcome, None
    except Exception as exc:
        # Our own bug, not the upstream's: fail the job with an explanation rather than leave it running.
        log.exception("job %s attempt %s crashed", claim.job_id, claim.number)
        return Outcome(classification="internal", error_type="internal_error", error_message=repr(exc)[:2000]), None


# Database errors worth waiting out (pool exhausted, connection dropped, server restarting), not our bugs.
_TRANSIENT_DB = (sa_exc.OperationalError, sa_exc.TimeoutError, sa_exc.InterfaceError)


def persist(what: str, fn: Callable[[], T], *, give_up_after: float) -> T:
    """Run a database step until it succeeds or `give_up_after` seconds pass. A finished call's outcome exists only
    in this process's memory: losing it to a full connection pool would mean calling (and paying) MiniMax again."""
    deadline = time.monotonic() + give_up_after
    delay = 0.2
    while True:
        try:
            return fn()
        except _TRANSIENT_DB as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _mark_sent(claim: Claim, rt: Runtime) -> None:
    try:
        rt.limiter.mark_sent(permit_id(claim.job_id, claim.number), model=claim.model, tenant=claim.tenant_id)
    except redis.RedisError as exc:
        log.warning("could not stamp the send time of %s: %s", claim.job_id, exc)


def _with_retry_decision(outcome: Outcome, error: UpstreamError, claim: Claim, rt: Runtime) -> Outcome:
    decision = rt.retry_policy.decide(
        error, attempt=claim.number, max_attempts=claim.max_attempts, now=utcnow(), deadline=claim.expires_at
    )
    free = error.unsent and decision.retry_at is not None
    return replace(outcome, retry_at=decision.retry_at, retry_note=decision.reason, free_retry=free)


def _settle(claim: Claim, outcome: Outcome, error: UpstreamError | None, rt: Runtime) -> None:
    """Tell the shared limiter what the call really cost, free the tenant's concurrency slot, and slow every
    worker down if MiniMax said we were too fast. Soft state: a Redis hiccup must not fail the job."""
    permit = permit_id(claim.job_id, claim.number)
    billed_input = sum(outcome.usage.get(k, 0) for k in ("input_tokens", "cache_read_tokens", "cache_write_tokens"))
    # A failure that billed nothing still counts its estimated input: the upstream may have counted it, unless it
    # never received the request.
    unsent = error is not None and error.unsent
    input_tokens = billed_input or (0 if outcome.succeeded or unsent else claim.estimated_input_tokens)
    try:
        rt.limiter.settle(
            permit,
            model=claim.model,
            tenant=claim.tenant_id,
            input_tokens=input_tokens,
            output_tokens=outcome.usage.get("output_tokens", 0),
        )
        rt.limiter.release(permit, tenant=claim.tenant_id)
        if error is not None and slows_the_limiter(error):
            rt.limiter.penalize(claim.model)
    except redis.RedisError as exc:
        log.warning("could not settle permit %s: %s", permit, exc)


def run_job(job_id: str, *, rt: Runtime) -> None:
    """Safe to run twice and to run for a job that is not runnable: the claim decides."""
    obs_logging.new_context(job_id=job_id)  # every log line of this attempt carries the ids (observability)

    def take() -> Claim | None:
        with transaction(rt.session_factory) as session:
            return transitions.claim(session, job_id=job_id, owner=rt.owner, lease_seconds=rt.settings.lease_seconds)

    claim = persist(f"claim {job_id}", take, give_up_after=30)
    if claim is None:
        log.debug("job %s not claimable (taken, finished or not due)", job_id)
        return
    obs_logging.bind(batch_id=claim.batch_id, tenant=claim.tenant_id, attempt=claim.number)
    started = time.monotonic()
    # Registered until the outcome is written: the lease keeper renews the lease while a slow write is retried.
    handle = rt.register(claim.job_id, claim.number, claim.tenant_id)
    try:
        outcome, error = call_upstream(claim, rt, handle)
        worker_metrics.observe_call(
            claim.model, claim.format, outcome.classification, seconds=time.monotonic() - started
        )
        if error is not None:
            outcome = _with_retry_decision(outcome, error, claim, rt)

        def record() -> bool:
            with transaction(rt.session_factory) as session:
                return transitions.finish(session, claim=claim, outcome=outcome, prices=rt.prices)

        moved = persist(f"record {job_id}", record, give_up_after=rt.settings.lease_seconds * 10)
    finally:
        rt.unregister(claim.job_id)
    _settle(claim, outcome, error, rt)
    log.info(
        "job %s attempt %s: %s%s%s",
        job_id,
        claim.number,
        outcome.classification,
        f" ({outcome.retry_note})" if error is not None else "",
        "" if moved else " (job no longer ours; outcome recorded on the attempt only)",
    )
