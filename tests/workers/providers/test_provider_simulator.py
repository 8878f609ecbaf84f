"""Both adapters end to end against the MiniMax simulator: answers, usage vs. its ledger, faults, timeouts."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import httpx
import pytest

from tests.workers.providers.conftest import ledger
from workers.providers import Classification, Completion, UpstreamError, Usage, get_provider
from workers.providers.anthropic import AnthropicProvider

KEY = "sk-simulator"
MODEL = "MiniMax-M3"
FORMATS = ["anthropic", "openai"]
BOTH_MODES = [pytest.param(True, id="stream"), pytest.param(False, id="plain")]


def marker(text: str) -> str:
    return "SIM:" + hashlib.sha256(text.encode()).hexdigest()[:12]


def params_for(fmt: str, text: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 1024}
    if fmt == "anthropic":
        params["system"] = "You are terse."
    else:
        params["messages"].insert(0, {"role": "system", "content": "You are terse."})
    return params | extra


def run(
    http: httpx.Client,
    base_url: str,
    fmt: str,
    text: str,
    *,
    stream: bool = True,
    key: str = KEY,
    on_progress: Any = None,
    **extra: Any,
) -> Completion:
    return get_provider(fmt).call(
        client=http,
        base_url=base_url,
        api_key=key,
        model=MODEL,
        params=params_for(fmt, text, **extra),
        stream=stream,
        on_progress=on_progress,
    )


def fail(http: httpx.Client, base_url: str, fmt: str, text: str, **kwargs: Any) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        run(http, base_url, fmt, text, **kwargs)
    return caught.value


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_success_answer_and_usage_match_the_ledger(http: httpx.Client, base_url: str, fmt: str, stream: bool) -> None:
    text = f"Summarize the quarterly report ({fmt}, {stream})"
    result = run(http, base_url, fmt, text, stream=stream, thinking={"type": "disabled"})
    assert result.text.startswith(f"{marker(text)} You said: {text}")
    assert result.content == [{"type": "text", "text": result.text}]
    assert result.stop_reason == "end_turn"
    assert result.model == MODEL
    [entry] = ledger(http, base_url)
    assert (entry["outcome"], entry["request_id"]) == ("succeeded", result.request_id)
    assert result.usage == Usage(input_tokens=entry["input_tokens"], output_tokens=entry["output_tokens"])
    assert result.usage.output_tokens == 48


@pytest.mark.parametrize("stream", BOTH_MODES)
def test_anthropic_thinking_block_is_kept_whole_with_its_signature(
    http: httpx.Client, base_url: str, stream: bool
) -> None:
    text = "Think first, then answer"
    result = run(http, base_url, "anthropic", text, stream=stream, thinking={"type": "adaptive"})
    thinking, answer = result.content
    assert thinking["type"] == "thinking"
    assert thinking["signature"] == hashlib.sha256(thinking["thinking"].encode()).hexdigest()  # the simulator's
    assert thinking["thinking"].startswith("Simulated reasoning")
    assert answer == {"type": "text", "text": result.text}
    assert marker(text) in result.text
    assert "Simulated reasoning" not in result.text
    [entry] = ledger(http, base_url)
    assert result.usage.output_tokens == entry["output_tokens"] == 48


@pytest.mark.parametrize("split", [False, True], ids=["think-tags", "reasoning_split"])
@pytest.mark.parametrize("stream", BOTH_MODES)
def test_openai_thinking_becomes_a_block_before_the_text(
    http: httpx.Client, base_url: str, stream: bool, split: bool
) -> None:
    text = "Think in the OpenAI format"
    result = run(http, base_url, "openai", text, stream=stream, reasoning_split=split)  # M3 thinks by default
    thinking, answer = result.content
    assert thinking["type"] == "thinking"
    assert thinking["signature"] is None
    assert thinking["thinking"].startswith("Simulated reasoning")
    assert answer["text"] == result.text
    assert result.text.startswith(marker(text))
    assert "<think>" not in result.text
    message = result.raw["choices"][0]["message"]
    if split:
        assert message["reasoning_details"][0]["text"] == thinking["thinking"]
    else:  # raw stays as the API sent it
        assert message["content"].startswith("<think>")
    [entry] = ledger(http, base_url)
    assert result.usage.output_tokens == entry["output_tokens"]


SENSITIVE_FIELDS = ("input_sensitive", "output_sensitive", "input_sensitive_type", "output_sensitive_type",
                    "output_sensitive_int")  # fmt: skip


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_equals_plain(http: httpx.Client, base_url: str, fmt: str) -> None:
    text = "Same question twice [[sim:output_tokens=120]]"
    extra = {"thinking": {"type": "adaptive"}} if fmt == "anthropic" else {"reasoning_split": True}
    streamed = run(http, base_url, fmt, text, stream=True, **extra)
    plain = run(http, base_url, fmt, text, stream=False, **extra)
    assert streamed.content == plain.content
    assert (streamed.text, streamed.stop_reason, streamed.usage) == (
        plain.text,
        plain.stop_reason,
        plain.usage,
    )
    assert streamed.usage.output_tokens == 120
    if fmt == "anthropic":
        ignore = {"id", "base_resp"}
    else:
        # The content-filter flags come with the plain answer only (text-chat-openai response example), as do
        # the message's `name` and `audio_content`.
        ignore = {"id", "created", "base_resp", *SENSITIVE_FIELDS}
        for choice in plain.raw["choices"]:
            assert (choice["message"].pop("name"), choice["message"].pop("audio_content")) == ("MiniMax AI", "")
        assert plain.raw["input_sensitive"] is False
    assert {k: v for k, v in streamed.raw.items() if k not in ignore} == {
        k: v for k, v in plain.raw.items() if k not in ignore
    }


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_answer_stops_at_max_tokens(http: httpx.Client, base_url: str, fmt: str, stream: bool) -> None:
    result = run(
        http,
        base_url,
        fmt,
        "Write a long essay [[sim:output_tokens=500]]",
        stream=stream,
        max_tokens=30,
        thinking={"type": "disabled"},
    )
    assert result.stop_reason == "max_tokens"
    [entry] = ledger(http, base_url)
    assert result.usage.output_tokens == entry["output_tokens"] == 30


FAULTS = [
    # directive, classification, error_type, http_status, minimax_code
    ("[[sim:fault=429]]", Classification.RATE_LIMITED, "rate_limit_error", 429, 1002),
    ("[[sim:fault=500]]", Classification.RETRYABLE, "api_error", 500, 1000),
    ("[[sim:fault=529]]", Classification.RETRYABLE, "overloaded_error", 529, 1000),
    ("[[sim:fault=base_resp]]", Classification.RETRYABLE, "base_resp", 200, 1000),
    ("[[sim:base_resp=1008]]", Classification.PERMANENT, "base_resp", 200, 1008),
    ("[[sim:base_resp=1039]]", Classification.RATE_LIMITED, "base_resp", 200, 1039),
    ("[[sim:error=2013]]", Classification.PERMANENT, "invalid_request_error", 400, 2013),
    ("[[sim:error=1008]]", Classification.PERMANENT, "api_error", 500, 1008),  # balance as HTTP 500
    ("[[sim:error=2056]]", Classification.RATE_LIMITED, "rate_limit_error", 429, 2056),
]


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("directive", "classification", "error_type", "status", "code"), FAULTS, ids=[f[0][6:-2] for f in FAULTS]
)
def test_faults_are_classified(
    http: httpx.Client,
    base_url: str,
    fmt: str,
    stream: bool,
    directive: str,
    classification: Classification,
    error_type: str,
    status: int,
    code: int,
) -> None:
    error = fail(http, base_url, fmt, f"Hello {directive}", stream=stream)
    assert error.classification is classification
    assert error.http_status == status
    assert error.minimax_code == code
    # The OpenAI endpoint's HTTP errors carry the same type inside {"error": {...}}.
    assert error.error_type == error_type
    assert error.message
    assert error.usage is None
    assert ledger(http, base_url) == []


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_key_is_permanent(http: httpx.Client, base_url: str, fmt: str, stream: bool) -> None:
    error = fail(http, base_url, fmt, "Hello", stream=stream, key="sk-wrong")
    assert (error.classification, error.http_status, error.minimax_code) == (
        Classification.PERMANENT,
        401,
        2049,
    )


def test_anthropic_midstream_error_event_reports_usage_billed_so_far(http: httpx.Client, base_url: str) -> None:
    error = fail(http, base_url, "anthropic", "Go [[sim:fault=midstream]] [[sim:output_tokens=200]]")
    assert error.error_type == "api_error"  # from the `event: error` payload
    assert (error.classification, error.minimax_code, error.http_status) == (
        Classification.RETRYABLE,
        1000,
        200,
    )
    [entry] = ledger(http, base_url)
    assert entry["outcome"] == "midstream_error"
    assert error.request_id == entry["request_id"]
    # message_start's usage is a placeholder on MiniMax: the output is counted from what streamed, the input is
    # left to the worker (count_tokens or the intake estimate).
    assert error.usage == Usage(output_tokens=entry["output_tokens"], estimated=True)
    assert 0 < entry["output_tokens"] < 200


def test_openai_midstream_disconnect_is_stream_broken(http: httpx.Client, base_url: str) -> None:
    error = fail(http, base_url, "openai", "Go [[sim:fault=midstream]] [[sim:output_tokens=200]]", reasoning_split=True)
    assert (error.error_type, error.classification) == ("stream_broken", Classification.RETRYABLE)
    [entry] = ledger(http, base_url)
    assert entry["outcome"] == "midstream_error"
    assert error.request_id == entry["request_id"]
    # The prompt's count only comes with the last chunk; the output streamed so far is estimated.
    assert error.usage == Usage(output_tokens=entry["output_tokens"], estimated=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plain_answer_cut_mid_body_is_stream_broken(http: httpx.Client, base_url: str, fmt: str) -> None:
    error = fail(http, base_url, fmt, "Go [[sim:fault=midstream]]", stream=False)
    assert (error.error_type, error.classification) == ("stream_broken", Classification.RETRYABLE)


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_hang_hits_the_read_timeout(base_url: str, fmt: str, stream: bool) -> None:
    with httpx.Client(timeout=httpx.Timeout(0.5, connect=5.0)) as client:
        started = time.monotonic()
        error = fail(client, base_url, fmt, "Hello [[sim:fault=hang]]", stream=stream)
    assert (error.error_type, error.classification) == ("read_timeout", Classification.RETRYABLE)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("fmt", FORMATS)
def test_progress_rises_to_the_real_output_count(http: httpx.Client, base_url: str, fmt: str) -> None:
    seen: list[int] = []
    result = run(
        http,
        base_url,
        fmt,
        "Count along [[sim:output_tokens=300]]",
        on_progress=seen.append,
        thinking={"type": "disabled"},
    )
    assert len(seen) >= 10
    assert seen == sorted(set(seen))  # strictly increasing
    assert seen[-1] == result.usage.output_tokens == 300


class Canceled(Exception):
    pass


@pytest.mark.parametrize("fmt", FORMATS)
def test_progress_callback_exception_aborts_the_call(http: httpx.Client, base_url: str, fmt: str) -> None:
    def on_progress(tokens: int) -> None:
        if tokens >= 20:
            raise Canceled(tokens)

    started = time.monotonic()
    with pytest.raises(Canceled):  # unchanged, not wrapped in UpstreamError
        run(
            http,
            base_url,
            fmt,
            "Slow one [[sim:latency=3]] [[sim:output_tokens=400]]",
            on_progress=on_progress,
        )
    assert time.monotonic() - started < 2  # did not read the 3-second answer to its end
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the simulator sees the connection go away
        stats = http.get(f"{base_url}/_sim/stats").json()
        if stats["by_outcome"].get("client_disconnected"):
            break
        time.sleep(0.05)
    assert stats["by_outcome"].get("client_disconnected") == 1
    # Billed as MiniMax bills a closed stream: the prompt and the tokens generated so far, never as finished.
    [entry] = ledger(http, base_url)
    assert entry["outcome"] == "client_disconnected"
    assert entry["input_tokens"] > 0
    assert 20 <= entry["output_tokens"] < 400


def test_count_tokens_matches_what_a_call_bills(http: httpx.Client, base_url: str) -> None:
    params = params_for("anthropic", "How many tokens is this?", tools=[{"name": "t", "input_schema": {}}])
    counted = AnthropicProvider().count_tokens(
        client=http, base_url=base_url + "/", api_key=KEY, model=MODEL, params=params
    )
    result = run(http, base_url, "anthropic", "How many tokens is this?", tools=[{"name": "t", "input_schema": {}}])
    assert counted == result.usage.input_tokens == ledger(http, base_url)[0]["input_tokens"]
