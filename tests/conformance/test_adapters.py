"""Every fixture of the corpus through the adapters (workers/providers): the normalized result MiniMax's answer
stands for, or the error classification it must get (issue 15.1, 15.5). The answer is replayed byte for byte by an
httpx transport; the adapter is reached through a base URL in each documented form (issue 15.2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.conformance.corpus import load_all, sse_bytes
from workers.providers import Classification, UpstreamError, Usage, get_provider
from workers.providers.anthropic import AnthropicProvider
from workers.providers.transport import checked_json
from workers.retry import RetryPolicy, slows_the_limiter

FIXTURES = load_all()
CHAT = [(n, f) for n, f in FIXTURES if f["format"] in ("anthropic", "openai")]
FILES = [(n, f) for n, f in FIXTURES if f["format"] == "files"]
BASES = ["https://api.minimax.io", "https://api.minimax.io/v1/", "https://api.minimaxi.com/anthropic"]
PATHS = {"anthropic": "/anthropic/v1/messages", "openai": "/v1/chat/completions"}


def replay(fixture: dict[str, Any], expected_path: str, seen: list[httpx.Request]) -> httpx.Client:
    answer = fixture["response"]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.url.path == expected_path
        if "events" in answer:
            body, kind = sse_bytes(answer["events"]), "text/event-stream"
        else:
            body, kind = json.dumps(answer["body"]).encode(), "application/json"
        return httpx.Response(answer["status"], content=body, headers={"content-type": kind})

    return httpx.Client(transport=httpx.MockTransport(handler))


def run(fixture: dict[str, Any], base: str, seen: list[httpx.Request]) -> Any:
    request = dict(fixture["request"])
    model = request.pop("model")
    stream = bool(request.pop("stream", False))
    if fixture.get("call") == "count_tokens":
        with replay(fixture, PATHS["anthropic"] + "/count_tokens", seen) as client:
            return AnthropicProvider().count_tokens(
                client=client, base_url=base, api_key="sk-test", model=model, params=request
            )
    with replay(fixture, PATHS[fixture["format"]], seen) as client:
        return get_provider(fixture["format"]).call(
            client=client, base_url=base, api_key="sk-test", model=model, params=request, stream=stream
        )


def check_error(error: UpstreamError, expected: dict[str, Any]) -> None:
    assert error.classification is Classification(expected["classification"])
    for field in ("error_type", "minimax_code", "http_status"):
        if field in expected:
            assert getattr(error, field) == expected[field], field
    if "usage" in expected:
        assert error.usage == Usage(**expected["usage"])
    if "slows_limiter" in expected:
        assert slows_the_limiter(error) is expected["slows_limiter"]
    if expected.get("gives_up_after_attempts"):
        # Retried on purpose, and only within the job's attempt budget: never forever.
        now = datetime.now(UTC)
        policy, deadline = RetryPolicy(), now + timedelta(days=1)
        assert policy.decide(error, attempt=1, max_attempts=5, now=now, deadline=deadline).retry_at is not None
        assert policy.decide(error, attempt=5, max_attempts=5, now=now, deadline=deadline).retry_at is None


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(("name", "fixture"), CHAT, ids=[n for n, _ in CHAT])
def test_adapter_reads_the_fixture(name: str, fixture: dict[str, Any], base: str) -> None:
    expected = fixture["expect"]
    seen: list[httpx.Request] = []
    if "error" in expected:
        with pytest.raises(UpstreamError) as caught:
            run(fixture, base, seen)
        check_error(caught.value, expected["error"])
        return
    result = run(fixture, base, seen)
    assert len(seen) == 1
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    if fixture.get("call") == "count_tokens":
        assert result == expected["input_tokens"]
        return
    assert result.text == expected["text"]
    assert [b["type"] for b in result.content] == expected["blocks"]
    assert result.stop_reason == expected["stop_reason"]
    assert result.usage == Usage(**expected["usage"])
    thinking = next((b for b in result.content if b["type"] == "thinking"), None)
    if "thinking" in expected:
        assert thinking is not None
        assert thinking["thinking"] == expected["thinking"]
    if "signature" in expected:
        assert thinking is not None
        assert thinking["signature"] == expected["signature"]  # kept whole, for the next turn


@pytest.mark.parametrize(("name", "fixture"), FILES, ids=[n for n, _ in FILES])
def test_files_answers_are_read_with_the_int64_id_kept_as_a_decimal_string(name: str, fixture: dict[str, Any]) -> None:
    answer = fixture["response"]
    response = httpx.Response(answer["status"], json=answer["body"])
    expected = fixture["expect"]
    if "error" in expected:
        with pytest.raises(UpstreamError) as caught:
            checked_json(response)
        check_error(caught.value, expected["error"])
        return
    payload = checked_json(response)
    file_id = payload["file"]["file_id"]
    assert isinstance(file_id, int)
    assert not isinstance(file_id, bool)
    assert str(file_id) == expected["file_id"]


def test_every_fixture_names_its_source_and_kind() -> None:
    assert len(FIXTURES) >= 20
    for name, fixture in FIXTURES:
        assert fixture["status"] in ("documented", "observed"), name
        source = fixture["source"]
        assert "minimax.io" in source or "reference/minimax-api.md" in source, name
        assert fixture["format"] in ("anthropic", "openai", "files"), name
