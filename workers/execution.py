"""Running one job: claim it under a lease, call MiniMax, decide on a retry, record the attempt and the outcome,
and settle the rate-limit permit it ran under."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeVar

import redis
from sqlalchemy import exc as sa_exc

from service import accounts
from service.accounts import tenant_keys
from service.db import one_statement, transaction, utcnow
from service.jobs import repository as jobs_repository
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.observability import logging as obs_logging
from service.observability import tracing
from service.observability import worker as worker_metrics
from workers import media, preflight, stopping
from workers.dispatcher import permit_id
from workers.limiter import RateLimiter
from workers.limiter.accounts import TENANT_PREFIX
from workers.providers import Classification, Completion, UpstreamError, Usage, get_provider
from workers.retry import slows_the_limiter
from workers.runtime import InFlight, JobAborted, Runtime, Upstream

log = logging.getLogger(__name__)
T = TypeVar("T")
# A tenant's own key that this worker cannot decrypt, or that was removed since the dispatch: the job is handed
# back (`_account_at_fault`).
TENANT_KEY_UNUSABLE = "tenant_key_unusable"
TENANT_KEY_REMOVED = "tenant_key_removed"


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


def input_tokens(claim: Claim, rt: Runtime) -> int:
    """The input tokens of a call whose upstream usage never arrived, never 0: MiniMax's own count where it
    offers one (count_tokens: M3 on the Anthropic format, see workers/preflight.py), else the intake estimate,
    which errs high (service/tokens.py), so the tenant's input is never under-billed."""
    if preflight.countable(claim):
        try:
            return preflight.count(claim, rt, _upstream(claim, rt))  # the account that took the call counts it
        except UpstreamError as exc:
            log.info("job %s: count_tokens failed (%s); billing the intake estimate", claim.job_id, exc)
    return max(1, claim.estimated_input_tokens)


def billed(usage: Usage | None, *, claim: Claim, rt: Runtime, output_so_far: int = 0) -> tuple[dict[str, int], bool]:
    """(usage to record, whether it is our estimate). The upstream's own usage is taken as given; a call that
    broke or was stopped after MiniMax received it is billed for its input (see `input_tokens`) and the output
    counted from the text and thinking received."""
    if usage is not None and not usage.estimated:
        return _usage(usage), False
    output = usage.output_tokens if usage is not None else output_so_far
    return {"input_tokens": input_tokens(claim, rt), "output_tokens": output}, True


def failure(error: UpstreamError, *, claim: Claim, rt: Runtime) -> Outcome:
    usage, estimated = _usage(error.usage), False
    if error.usage is not None and error.usage.estimated:
        usage, estimated = billed(error.usage, claim=claim, rt=rt)
    elif error.usage is None and error.error_type == "stream_broken" and not error.unsent:
        # The answer began and broke before any of it could be read (a plain JSON body cut short): MiniMax
        # generated it, so at least the prompt was billed.
        usage, estimated = billed(None, claim=claim, rt=rt)
    return Outcome(
        classification=error.classification.value,
        http_status=error.http_status,
        minimax_code=error.minimax_code,
        error_type=error.error_type,
        error_message=error.message,
        upstream_request_id=error.request_id,
        usage=usage,
        estimated=estimated,
    )


_STOPPED = {
    stopping.CANCELED: (
        "canceled",
        "aborted",
        "the call was stopped: the job was canceled or handed to another worker",
    ),
    stopping.LEASE_LOST: (
        "canceled",
        "aborted",
        "the call was stopped: the job was canceled or handed to another worker",
    ),
    stopping.EXPIRED: (
        "expired",
        "expired",
        "the job passed its deadline (expires_at) while the call ran; the call was stopped",
    ),
    stopping.TOO_LONG: (
        "permanent",
        "call_too_long",
        "the call ran longer than MMJOBS_MAX_CALL_SECONDS and was stopped",
    ),
}


def stopped(
    claim: Claim, rt: Runtime, handle: InFlight, *, sent: bool, usage: Usage | None, request_id: str | None
) -> Outcome:
    """The outcome of a call we stopped, billed for what it used so far if MiniMax had received it."""
    reason = handle.aborted.reason or stopping.CANCELED
    classification, error_type, message = _STOPPED.get(reason, _STOPPED[stopping.CANCELED])
    if reason == stopping.TOO_LONG:
        message = message.replace(
            "MMJOBS_MAX_CALL_SECONDS", f"MMJOBS_MAX_CALL_SECONDS ({rt.settings.max_call_seconds:g} s)"
        )
    recorded: dict[str, int] = {}
    estimated = False
    if sent:
        recorded, estimated = billed(usage, claim=claim, rt=rt, output_so_far=handle.output_tokens)
    return Outcome(
        classification=classification,
        error_type=error_type,
        error_message=message,
        upstream_request_id=request_id,
        usage=recorded,
        estimated=estimated,
    )


def call_upstream(claim: Claim, rt: Runtime, handle: InFlight) -> tuple[Outcome, UpstreamError | None]:
    sent = False
    try:
        # Every read of the call honours the handle's stop signal: a cancel, a lost lease or the deadline closes
        # the connection at once (workers/stopping.py), in every mode (streamed, plain, a silent stream).
        with stopping.watching(handle.aborted):
            upstream = _upstream(claim, rt)  # first: a tenant's key that cannot be used sends nothing
            # Every call of the attempt goes to that account: a file id or a token count of another is not its own.
            claim = media.prepare(claim, rt, upstream)  # mmjobs_file:// -> mm_file:// (once per account) or inline
            preflight.check(claim, rt, upstream)  # near M3's window: count_tokens first, fail early with the figure
            if handle.aborted.is_set():
                # Stopped before its request went out (canceled between the claim and the call): nothing billed. A
                # stop from here on cuts the request or its answer: billed for what MiniMax may have used.
                return stopped(claim, rt, handle, sent=False, usage=None, request_id=None), None
            _mark_sent(claim, rt)
            sent = True
            sent_at = time.time()
            with tracing.span("upstream.call", attributes={"gen_ai.request.model": claim.model}) as span:
                completion = get_provider(claim.format).call(
                    client=rt.http,
                    base_url=upstream.base_url,
                    api_key=upstream.api_key,
                    model=claim.model,
                    params=claim.params,
                    stream=rt.settings.stream,
                    on_progress=handle.progress,
                )
                span.set("gen_ai.usage.output_tokens", completion.usage.output_tokens if completion.usage else None)
        _key_answered(claim, rt, sent_at)
        return success(completion), None
    except UpstreamError as error:
        if handle.aborted.is_set():
            # Billed as a stop only if MiniMax may have used something: not if it never received the request, nor
            # if it refused it (an error answer reporting no usage: 4xx/5xx, a base_resp code), which a stop that
            # came meanwhile does not change (the torture test: canceled jobs billed for calls answered 500).
            sent = sent and not error.unsent and not _refused(error)
            return stopped(claim, rt, handle, sent=sent, usage=error.usage, request_id=error.request_id), None
        return failure(error, claim=claim, rt=rt), error
    except JobAborted:
        return stopped(claim, rt, handle, sent=sent, usage=None, request_id=None), None
    except Exception as exc:
        if handle.aborted.is_set():
            return stopped(claim, rt, handle, sent=sent, usage=None, request_id=None), None
        # Our own bug, not the upstream's: fail the job with an explanation rather than leave it running.
        log.exception("job %s attempt %s crashed", claim.job_id, claim.number)
        return Outcome(classification="internal", error_type="internal_error", error_message=repr(exc)[:2000]), None


def _refused(error: UpstreamError) -> bool:
    """MiniMax answered the request with an error and reported no usage: nothing was generated, nothing is billed
    (`failure` bills such an answer nothing either). A stream that broke is not a refusal."""
    return error.http_status is not None and error.usage is None and error.error_type != "stream_broken"


def _deadline(claim: Claim, rt: Runtime) -> tuple[float, str]:
    """When the call must stop (time.monotonic()) and why: the job's `expires_at` or the longest call allowed,
    whichever comes first."""
    to_expiry = (claim.expires_at - utcnow()).total_seconds()
    if to_expiry < rt.settings.max_call_seconds:
        return time.monotonic() + max(0.0, to_expiry), stopping.EXPIRED
    return time.monotonic() + rt.settings.max_call_seconds, stopping.TOO_LONG


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


def _upstream(claim: Claim, rt: Runtime) -> Upstream:
    """The base URL and key of the account the attempt's permit is on (service/accounts/). A tenant's own key is
    decrypted here, in the worker (DESIGN.md decision 10); one that cannot be used raises an unsent UpstreamError
    that hands the job back (`_account_at_fault`), never a call on another key."""
    if claim.account is None:
        return Upstream(rt.settings.minimax_base_url, rt.api_key)
    if claim.account.startswith(TENANT_PREFIX):
        return _tenant_key(claim, rt)
    account = rt.account_pool.get(claim.account).account
    return Upstream(account.base_url, account.api_key)


def _tenant_key(claim: Claim, rt: Runtime) -> Upstream:
    tenant_id = claim.account[len(TENANT_PREFIX) :] if claim.account else claim.tenant_id
    try:
        found = rt.tenant_keys.key(tenant_id)
    except tenant_keys.TenantKeyUnusable as exc:
        log.error("job %s: the own key of tenant %s cannot be decrypted here: %s", claim.job_id, tenant_id, exc)
        try:
            rt.account_pool.hold_tenant(
                tenant_id,
                why="undecryptable",
                message=exc.message,
                version=exc.key_version,
                probe_every=accounts.UNDECRYPTABLE_PROBE_SECONDS,
            )
        except redis.RedisError as redis_exc:
            log.warning("could not hold the jobs of tenant %s: %s", tenant_id, redis_exc)
        raise UpstreamError(
            classification=Classification.RETRYABLE,
            error_type=TENANT_KEY_UNUSABLE,
            message=exc.message,
            unsent=True,
        ) from None
    if found is None:
        raise UpstreamError(
            classification=Classification.RETRYABLE,
            error_type=TENANT_KEY_REMOVED,
            message="your own MiniMax key was removed after this job was dispatched",
            unsent=True,
        )
    return Upstream(found.base_url, found.api_key)


def _limiter(claim: Claim, rt: Runtime) -> RateLimiter:
    return rt.limiter if claim.account is None else rt.account_pool.get(claim.account).limiter


def _account_at_fault(outcome: Outcome, error: UpstreamError, claim: Claim, rt: Runtime) -> Outcome | None:
    """MiniMax refused the account (1004, 2049, 1008), not the request: with several accounts, that account leaves
    the rotation and the job is tried again at once on another, without using up an attempt. A tenant's own key
    this worker cannot use (`_tenant_key`): the job waits again, the attempt not counted, never sent elsewhere."""
    if error.error_type in (TENANT_KEY_UNUSABLE, TENANT_KEY_REMOVED):
        note = (
            "handed back, not counted: your jobs wait until your own key can be used again (never on another key)"
            if error.error_type == TENANT_KEY_UNUSABLE
            else "dispatched again (not counted)"
        )
        return replace(outcome, classification="retryable", retry_at=utcnow(), retry_note=note, free_retry=True)
    if error.minimax_code in accounts.ACCOUNT_CODES and claim.account and claim.account.startswith(TENANT_PREFIX):
        return _tenant_key_refused(outcome, error, claim, rt)
    if not rt.account_pool.multi or error.minimax_code not in accounts.ACCOUNT_CODES:
        return None
    if claim.account is None or claim.account not in rt.account_pool.by_name:
        return None
    rt.account_pool.take_out(claim.account, code=error.minimax_code, error=error.message or "")
    return replace(
        outcome,
        classification="retryable",
        retry_at=utcnow(),
        retry_note=f"upstream account {claim.account} was refused (MiniMax {error.minimax_code}); "
        "tried again on another account (not counted)",
        free_retry=True,
    )


def _tenant_key_refused(outcome: Outcome, error: UpstreamError, claim: Claim, rt: Runtime) -> Outcome:
    """MiniMax refused the tenant's own key (1004, 2049, 1008): it has nowhere else to go, so the tenant's jobs are
    held (this one handed back, not counted) and one is let through every `account_probe_seconds` until the key
    answers (service/accounts/)."""
    assert claim.account is not None
    tenant_id = claim.account[len(TENANT_PREFIX) :]
    code = error.minimax_code
    every = rt.settings.account_probe_seconds
    message = (
        f"MiniMax refused your own key ({code}: {error.message or 'no message'}). Your jobs wait, one tried every "
        f"{every:g} s, until it answers: fix the key or its balance on MiniMax's side, or set another key "
        "(PUT /v1/limits/upstream-key)"
    )
    try:
        kept = rt.tenant_keys.key(tenant_id)  # the version just used (kept in memory: no decryption here)
        rt.account_pool.hold_tenant(
            tenant_id,
            why="refused",
            code=code,
            message=message,
            version=kept.version if kept else "",
            probe_every=every,
        )
    except (redis.RedisError, tenant_keys.TenantKeyUnusable) as exc:
        log.warning("could not hold the jobs of tenant %s: %s", tenant_id, exc)
    return replace(
        outcome,
        classification="retryable",
        retry_at=utcnow(),
        retry_note=f"MiniMax refused your own key ({code}); handed back, not counted: your jobs wait until it "
        "answers again (never on another key)",
        free_retry=True,
    )


def _key_answered(claim: Claim, rt: Runtime, sent_at: float) -> None:
    """A call on a tenant's own key succeeded: a hold set on it before the call was sent is lifted."""
    if claim.account is None or not claim.account.startswith(TENANT_PREFIX):
        return
    try:
        rt.account_pool.tenant_answered(claim.account[len(TENANT_PREFIX) :], sent_at=sent_at)
    except redis.RedisError as exc:
        log.warning("could not lift the hold on the key of tenant %s: %s", claim.tenant_id, exc)


def _mark_sent(claim: Claim, rt: Runtime) -> None:
    try:
        _limiter(claim, rt).mark_sent(permit_id(claim.job_id, claim.number), model=claim.model, tenant=claim.tenant_id)
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
    limiter = _limiter(claim, rt)
    try:
        limiter.settle(
            permit,
            model=claim.model,
            tenant=claim.tenant_id,
            input_tokens=input_tokens,
            output_tokens=outcome.usage.get("output_tokens", 0),
            release=True,
        )
        if error is not None and slows_the_limiter(error):
            limiter.penalize(claim.model)
    except redis.RedisError as exc:
        log.warning("could not settle permit %s: %s", permit, exc)


def run_job(job_id: str, *, rt: Runtime) -> None:
    """Claim and run one job in this thread. Safe to run twice and to run for a job that is not runnable: the claim
    decides."""
    for claim, handle in take([job_id], rt=rt):
        attempt(claim, handle, rt=rt)


def take(job_ids: Sequence[str], *, rt: Runtime) -> list[tuple[Claim, InFlight]]:
    """Claim those of `job_ids` that can run now, in one statement, and register each claimed job as in flight
    (its lease kept by the runtime's keeper); the caller runs each with `attempt`. A job that is not claimable
    (taken, finished or not due) gives back the rate-limit permit it will never use. A job id twice in the message,
    or one another thread of this process is claiming, is left to that thread."""
    ids = [job_id for job_id in dict.fromkeys(job_ids) if rt.start_taking(job_id)]
    for job_id in set(job_ids) - set(ids):
        log.info("job %s: another thread of this worker is claiming it already (its message came twice)", job_id)
    if not ids:
        return []
    tries = 0

    def claim_them() -> list[Claim]:
        nonlocal tries
        tries += 1
        with one_statement(rt.session_factory) as session:  # the claim is one statement (transitions.claim_many)
            claims = transitions.claim_many(
                session, job_ids=ids, owner=rt.owner, lease_seconds=rt.settings.lease_seconds
            )
            claimed = {c.job_id for c in claims}
            lost = [j for j in ids if j not in claimed and not rt.runs(j)] if tries > 1 else []
            if lost:
                # The try before failed with a database error, possibly after its claim committed (in autocommit
                # the claim commits as its statement ends; an answer lost after that is an error here). A job
                # running under this process's name (unique per process start), which no other thread of it takes
                # (`start_taking`) or runs, is from that claim: it is run now, its lease renewed, not left to lapse
                # into lease recovery and cost an attempt.
                taken_up = transitions.claimed_by(
                    session, job_ids=lost, owner=rt.owner, lease_seconds=rt.settings.lease_seconds
                )
                for c in taken_up:
                    log.warning("job %s: its claim committed though the database's answer was lost", c.job_id)
                order = {j: i for i, j in enumerate(ids)}
                claims = sorted([*claims, *taken_up], key=lambda c: order[c.job_id])
            return claims

    taken: list[tuple[Claim, InFlight]] = []
    try:
        claims = persist(f"claim {', '.join(ids)}", claim_them, give_up_after=30)
        claimed = {c.job_id for c in claims}
        for job_id in ids:
            if job_id not in claimed:
                log.debug("job %s not claimable (taken, finished or not due)", job_id)
                _return_unused_permit(job_id, rt)
        # Every account first: what may raise does so before any job is registered (a registered job's lease is
        # renewed until it is unregistered; an unregistered one lapses, and lease recovery hands it back).
        claims = [
            replace(c, account=rt.account_pool.chosen_name(permit_id(c.job_id, c.number), tenant_id=c.tenant_id))
            for c in claims
        ]
        for claim in claims:
            # Registered until the outcome is written: the lease keeper renews the lease while a slow write is
            # retried. The caller runs each with `attempt`, whose `finally` unregisters, or unregisters it.
            deadline, why = _deadline(claim, rt)
            handle = rt.register(claim.job_id, claim.number, claim.tenant_id, deadline=deadline, deadline_reason=why)
            taken.append((claim, handle))
    finally:
        for job_id in ids:
            rt.done_taking(job_id)
    return taken


def attempt(claim: Claim, handle: InFlight, *, rt: Runtime) -> None:
    """Make the claimed attempt: call MiniMax, decide on a retry, record the outcome, settle the permit."""
    job_id = claim.job_id
    obs_logging.new_context(job_id=job_id)  # every log line of this attempt carries the ids (observability)
    obs_logging.bind(batch_id=claim.batch_id, tenant=claim.tenant_id, attempt=claim.number)
    started = time.monotonic()
    try:
        ids = tracing.job_attributes(
            job_id=job_id, tenant=claim.tenant_id, batch_id=claim.batch_id, attempt=claim.number
        )
        with tracing.span("job.run", parent=claim.traceparent, attributes=ids) as span:
            outcome, error = call_upstream(claim, rt, handle)
            span.set("mmjobs.classification", outcome.classification)
        worker_metrics.observe_call(
            claim.model, claim.format, outcome.classification, seconds=time.monotonic() - started
        )
        if error is not None:
            outcome = _account_at_fault(outcome, error, claim, rt) or _with_retry_decision(outcome, error, claim, rt)

        # Recorded with others ending now (workers/finisher.py: the job moved), or alone.
        finisher = rt.finisher if transitions.groupable(claim, outcome) else None
        moved = (finisher is not None and finisher.grouped(claim, outcome)) or record(claim, outcome, rt=rt)
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


def record(claim: Claim, outcome: Outcome, *, rt: Runtime) -> bool:
    """Record one attempt's outcome in a transaction of its own; returns whether its job moved."""

    def finish() -> bool:
        with transaction(rt.session_factory) as session:
            return transitions.finish(session, claim=claim, outcome=outcome, prices=rt.prices)

    return persist(f"record {claim.job_id}", finish, give_up_after=rt.settings.lease_seconds * 10)


def _return_unused_permit(job_id: str, rt: Runtime) -> None:
    """A claim that missed because the job ended (canceled, expired, finished) or is about to (past its deadline,
    in a canceling batch) gives its permit back at once: the dispatcher acquired it for the attempt that will now
    never run. A job that is merely not due yet, or that
    another worker runs, keeps it (the permit then belongs to that attempt)."""
    try:
        with one_statement(rt.session_factory) as session:
            ended = jobs_repository.ended_attempt(session, job_id=job_id)
    except _TRANSIENT_DB as exc:
        log.warning("could not look up unclaimed job %s (%s); its permit lapses on its own", job_id, exc)
        return
    if ended is None:
        return
    permit = permit_id(job_id, ended.attempt_count + 1)
    try:
        rt.account_pool.for_permit(permit).limiter.forfeit(permit, model=ended.model, tenant=ended.tenant_id)
    except redis.RedisError as exc:
        log.warning("could not return permit %s: %s", permit, exc)
