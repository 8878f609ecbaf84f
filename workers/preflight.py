"""Before a call: for a model that offers `count_tokens` (MiniMax-M3), a request whose intake estimate is near the
window (within `MMJOBS_PREFLIGHT_MARGIN`, 10 %, of the window minus max_tokens) is counted by MiniMax first. If
the count plus max_tokens does not fit, the attempt fails at once, permanently, as `context_window_exceeded`
with the exact figure, instead of paying for a call that ends in a 2013. The count is kept on the job either way.

Only the Anthropic format is counted: `count_tokens` is an Anthropic-endpoint call, and an OpenAI-format body
would have to be translated first, which would count a different request. A `count_tokens` that MiniMax refuses
as invalid (permanent) is logged and the call goes ahead; a retryable failure fails the attempt, to be retried.
"""

from __future__ import annotations

import logging

from service.catalog import get_model
from service.db import transaction
from service.jobs.transitions import Claim
from service.media import repository
from workers.providers import AnthropicProvider
from workers.providers.base import Classification, UpstreamError
from workers.runtime import Runtime, Upstream

log = logging.getLogger(__name__)
_COUNTER = AnthropicProvider()


def needs_count(claim: Claim, *, margin: float) -> bool:
    info = get_model(claim.model)
    if info is None or not info.count_tokens or claim.format != "anthropic":
        return False
    room = info.context_window - _max_tokens(claim)
    return claim.estimated_input_tokens >= (1 - margin) * room


def countable(claim: Claim) -> bool:
    """MiniMax offers count_tokens for this request (M3, Anthropic format)."""
    info = get_model(claim.model)
    return info is not None and info.count_tokens and claim.format == "anthropic"


def count(claim: Claim, rt: Runtime, upstream: Upstream) -> int:
    """MiniMax's count of the request's input tokens, asked of the attempt's account (raises `UpstreamError`)."""
    return _COUNTER.count_tokens(
        client=rt.http,
        base_url=upstream.base_url,
        api_key=upstream.api_key,
        model=claim.model,
        params=claim.params,
    )


def _max_tokens(claim: Claim) -> int:
    value = claim.params.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def check(claim: Claim, rt: Runtime, upstream: Upstream) -> None:
    """Raise a permanent `context_window_exceeded` UpstreamError when MiniMax's count does not fit the window."""
    if not needs_count(claim, margin=rt.settings.preflight_margin):
        return
    try:
        counted = count(claim, rt, upstream)
    except UpstreamError as error:
        if error.classification is not Classification.PERMANENT:
            raise
        log.warning("job %s: count_tokens refused (%s); calling without the preflight", claim.job_id, error)
        return
    with transaction(rt.session_factory) as session:
        repository.record_counted_tokens(session, job_id=claim.job_id, tokens=counted)
    info = get_model(claim.model)
    assert info is not None
    max_tokens = _max_tokens(claim)
    if counted + max_tokens > info.context_window:
        raise UpstreamError(
            classification=Classification.PERMANENT,
            error_type="context_window_exceeded",
            message=f"params.messages: MiniMax counts {counted:,} input tokens"
            + (f" + max_tokens {max_tokens:,} = {counted + max_tokens:,}" if max_tokens else "")
            + f", over {info.name}'s context window of {info.context_window:,} tokens "
            f"(estimated at intake: {claim.estimated_input_tokens:,}); the request was not sent",
        )
    log.info("job %s: %s input tokens counted, fits %s", claim.job_id, counted, info.name)
