"""Running one job: claim it under a lease, call MiniMax, record the attempt and the outcome."""

from __future__ import annotations

import logging
from dataclasses import asdict

from service.db import transaction
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from workers.providers import Completion, UpstreamError, get_provider
from workers.runtime import JobAborted, Runtime

log = logging.getLogger(__name__)


def _usage(completion_usage: object) -> dict[str, int]:
    return {k: int(v) for k, v in asdict(completion_usage).items()}  # type: ignore[call-overload]


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
        usage=_usage(error.usage) if error.usage else {},
    )


def call_upstream(claim: Claim, rt: Runtime) -> Outcome:
    handle = rt.register(claim.job_id, claim.number)
    try:
        completion = get_provider(claim.format).call(
            client=rt.http,
            base_url=rt.settings.minimax_base_url,
            api_key=rt.api_key,
            model=claim.model,
            params=claim.params,
            stream=rt.settings.stream,
            on_progress=handle.progress,
        )
        return success(completion)
    except UpstreamError as error:
        return failure(error)
    except JobAborted:
        return Outcome(
            classification="canceled",
            error_type="aborted",
            error_message="the call was stopped: the job was canceled or handed to another worker",
        )
    except Exception as exc:
        # Our own bug, not the upstream's: fail the job with an explanation rather than leave it running.
        log.exception("job %s attempt %s crashed", claim.job_id, claim.number)
        return Outcome(classification="internal", error_type="internal_error", error_message=repr(exc)[:2000])
    finally:
        rt.unregister(claim.job_id)


def run_job(job_id: str, *, rt: Runtime) -> None:
    """Safe to run twice and to run for a job that is not runnable: the claim decides."""
    with transaction(rt.session_factory) as session:
        claim = transitions.claim(
            session, job_id=job_id, owner=rt.owner, lease_seconds=rt.settings.lease_seconds
        )
    if claim is None:
        log.debug("job %s not claimable (taken, finished or not due)", job_id)
        return
    outcome = call_upstream(claim, rt)
    with transaction(rt.session_factory) as session:
        moved = transitions.finish(session, claim=claim, outcome=outcome)
    log.info(
        "job %s attempt %s: %s%s",
        job_id,
        claim.number,
        outcome.classification,
        "" if moved else " (job no longer ours; outcome recorded on the attempt only)",
    )
