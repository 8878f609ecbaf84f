"""`workers.preflight.check`: near MiniMax-M3's window, count_tokens decides before anything is spent."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.jobs.validation import check_request
from simulator.tokens import input_tokens
from tests.media.conftest import Worker, claim_for
from workers import preflight
from workers.providers import UpstreamError
from workers.providers.base import Classification

DOCUMENT = "lorem ipsum dolor sit amet, " * 128_000  # 3,584,000 characters: about 896,000 tokens


def long_request(video_seconds: int, max_tokens: int = 1000) -> dict[str, Any]:
    # Our estimate counts any video as 30,000 tokens; MiniMax (the simulator) counts its frames.
    video = {"type": "url", "url": f"https://cdn.example.com/talk.mp4?sim_seconds={video_seconds}"}
    content = [
        {"type": "text", "text": DOCUMENT},
        {"type": "video", "source": {**video, "fps": 2, "detail": "high"}},
        {"type": "text", "text": "Summarize the document and the talk."},
    ]
    return {"max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def estimated(params: dict[str, Any]) -> int:
    return check_request(model="MiniMax-M3", fmt="anthropic", params=params).estimated_input_tokens


def billed_calls(simulator_url: str) -> int:
    return len(httpx.get(simulator_url + "/_sim/ledger").json()["entries"])


def test_over_the_window_fails_early_with_the_exact_figure(worker: Worker, simulator_url: str) -> None:
    params = long_request(video_seconds=120)  # 240 frames x 800 tokens
    estimate = estimated(params)  # intake accepts it: the estimate fits
    assert estimate + 1000 <= 1_000_000
    exact = input_tokens(system=None, messages=params["messages"], tools=None)
    assert exact + 1000 > 1_000_000
    claim = worker.add_job(params, estimated=estimate)
    calls = billed_calls(simulator_url)

    with pytest.raises(UpstreamError) as caught:
        preflight.check(claim, worker.runtime, worker.upstream)

    error = caught.value
    assert error.classification == Classification.PERMANENT
    assert error.error_type == "context_window_exceeded"
    assert f"MiniMax counts {exact:,} input tokens" in error.message
    assert f"+ max_tokens 1,000 = {exact + 1000:,}" in error.message
    assert "context window of 1,000,000 tokens" in error.message
    assert f"estimated at intake: {estimate:,}" in error.message
    assert billed_calls(simulator_url) == calls  # nothing was paid for
    job = worker.job(claim.job_id)
    assert (job.estimated_input_tokens, job.counted_input_tokens) == (estimate, exact)


def test_a_request_that_fits_goes_ahead_with_its_count_kept(worker: Worker) -> None:
    params = long_request(video_seconds=30)
    claim = worker.add_job(params, estimated=estimated(params))
    preflight.check(claim, worker.runtime, worker.upstream)
    assert worker.job(claim.job_id).counted_input_tokens == input_tokens(
        system=None, messages=params["messages"], tools=None
    )


@pytest.mark.parametrize(
    ("estimate", "fmt", "model", "asked"),
    [
        (880_000, "anthropic", "MiniMax-M3", False),  # under 90 % of (window - max_tokens)
        (899_100, "anthropic", "MiniMax-M3", True),  # exactly at the margin
        (950_000, "openai", "MiniMax-M3", False),  # count_tokens is an Anthropic-endpoint call
        (190_000, "anthropic", "MiniMax-M2.7", False),  # M2.x has no count_tokens
    ],
)
def test_only_m3_near_the_window_is_counted(estimate: int, fmt: str, model: str, asked: bool) -> None:
    params = {"max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]}
    claim = claim_for("job_x", "t", params, fmt=fmt, estimated=estimate, model=model)
    assert preflight.needs_count(claim, margin=0.10) is asked


def test_a_refused_count_does_not_block_the_call_but_a_failing_one_is_retried(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    claim = worker.add_job(long_request(video_seconds=1), estimated=990_000 - 1000)

    def refuse(**_: Any) -> int:
        raise UpstreamError(classification=Classification.PERMANENT, error_type="invalid_request", message="no")

    monkeypatch.setattr(preflight._COUNTER, "count_tokens", refuse)
    preflight.check(claim, worker.runtime, worker.upstream)  # logged; the call goes ahead
    assert worker.job(claim.job_id).counted_input_tokens is None

    def overloaded(**_: Any) -> int:
        raise UpstreamError(classification=Classification.RETRYABLE, error_type="overloaded", message="529")

    monkeypatch.setattr(preflight._COUNTER, "count_tokens", overloaded)
    with pytest.raises(UpstreamError, match="529"):
        preflight.check(claim, worker.runtime, worker.upstream)
