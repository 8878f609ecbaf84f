"""Adapters against canned wire traffic in the shapes the live MiniMax API sends (quirks included).

The simulator tests cover the protocol end to end; these pin down what the simulator does not produce:
MiniMax's OpenAI stream closing with a whole `chat.completion` frame, placeholder usage, `<think>` tags,
errors inside an HTTP 200, and the exact request each adapter sends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from workers.providers import Classification, UpstreamError, Usage, get_provider
from workers.providers.anthropic import AnthropicProvider

BASE = "https://api.minimax.io/"


def sse(*events: tuple[str | None, object]) -> bytes:
    out = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        body = data if isinstance(data, str) else json.dumps(data)
        out.append(f"{head}data: {body}\n\n")
    return "".join(out).encode()


def client_for(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def replying(
    body: bytes | dict[str, Any],
    status: int = 200,
    seen: list[httpx.Request] | None = None,
    stream: bool = False,
) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        if isinstance(body, dict):
            return httpx.Response(status, json=body)
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    return client_for(handler)


def call(
    fmt: str,
    client: httpx.Client,
    *,
    stream: bool = True,
    params: dict[str, Any] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Any:
    return get_provider(fmt).call(
        client=client,
        base_url=BASE,
        api_key="sk-test",
        model="MiniMax-M2.7",
        params=params or {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64},
        stream=stream,
        on_progress=on_progress,
    )


# --- OpenAI format ---------------------------------------------------------------------------------------

PLACEHOLDER = {"total_tokens": 0, "total_characters": 0}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if delta is not None:
        choice["delta"] = delta
    return {
        "id": "cmpl-1",
        "object": "chat.completion.chunk",
        "model": "MiniMax-M2.7",
        "choices": [choice],
        "usage": PLACEHOLDER,
        **extra,
    }


MINIMAX_OPENAI_STREAM = sse(
    (None, chunk({"role": "assistant", "content": "<think>\nThe user greets"})),
    (None, chunk({"role": "", "content": ".\n</think>\n\nHel"})),
    (None, chunk({"content": "lo!"}, finish="stop")),
    # MiniMax's closing frame: the whole message again, and the only real usage.
    (
        None,
        {
            "id": "cmpl-1",
            "object": "chat.completion",
            "model": "MiniMax-M2.7",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {
                        "role": "assistant",
                        "content": "<think>\nThe user greets.\n</think>\n\nHello!",
                    },
                }
            ],
            "usage": {
                "prompt_tokens": 30,
                "completion_tokens": 12,
                "total_tokens": 42,
                "prompt_tokens_details": {"cached_tokens": 10},
            },
            "base_resp": {"status_code": 0, "status_msg": ""},
        },
    ),
)


def test_openai_stream_closing_frame_is_not_counted_twice_and_think_tags_become_a_block() -> None:
    progress: list[int] = []
    result = call("openai", replying(MINIMAX_OPENAI_STREAM), on_progress=progress.append)  # no [DONE] at all
    assert result.text == "Hello!"
    assert result.content == [
        {"type": "thinking", "thinking": "The user greets.", "signature": None},
        {"type": "text", "text": "Hello!"},
    ]
    assert result.usage == Usage(input_tokens=20, output_tokens=12, cache_read_tokens=10)
    assert result.stop_reason == "end_turn"
    assert result.request_id == "cmpl-1"
    # raw is the answer as a non-streamed call gives it: the think tags stay in the content.
    assert result.raw["choices"][0]["message"]["content"] == "<think>\nThe user greets.\n</think>\n\nHello!"
    assert progress[-1] == 12
    assert progress[:-1] == sorted(set(progress[:-1]))


def test_openai_stream_reasoning_details_tool_calls_and_length() -> None:
    body = sse(
        (
            None,
            chunk({"reasoning_details": [{"type": "reasoning.text", "id": "r1", "index": 0, "text": "Need "}]}),
        ),
        (
            None,
            chunk({"reasoning_details": [{"type": "reasoning.text", "id": "r1", "index": 0, "text": "weather."}]}),
        ),
        (
            None,
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": '},
                        }
                    ]
                }
            ),
        ),
        (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]})),
        (
            None,
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "broken", "arguments": "{not json"},
                        }
                    ]
                },
                finish="tool_calls",
            ),
        ),
        (None, {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 9}}),
        (None, "[DONE]"),
    )
    result = call("openai", replying(body))
    assert result.content == [
        {"type": "thinking", "thinking": "Need weather.", "signature": None},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "broken", "input": "{not json"},
    ]
    assert result.stop_reason == "tool_use"
    assert result.raw["choices"][0]["message"]["reasoning_details"] == [
        {"type": "reasoning.text", "id": "r1", "index": 0, "text": "Need weather."}
    ]
    plain = {
        "id": "x",
        "choices": [{"index": 0, "finish_reason": "length", "message": {"content": "trunc"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9},
    }
    assert call("openai", replying(plain), stream=False).stop_reason == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_http_200_with_base_resp_error(stream: bool) -> None:
    body = {"id": "", "choices": None, "base_resp": {"status_code": 1039, "status_msg": "token limit"}}
    with pytest.raises(UpstreamError) as caught:
        call("openai", replying(body), stream=stream)  # JSON even when a stream was asked for
    error = caught.value
    assert (error.classification, error.error_type, error.minimax_code, error.http_status) == (
        Classification.RATE_LIMITED,
        "base_resp",
        1039,
        200,
    )


def test_openai_chunk_with_base_resp_mid_stream() -> None:
    body = sse(
        (None, chunk({"content": "abcdefgh"})),
        (None, {"choices": None, "base_resp": {"status_code": 1027, "status_msg": "output sensitive"}}),
    )
    with pytest.raises(UpstreamError) as caught:
        call("openai", replying(body))
    assert (caught.value.classification, caught.value.minimax_code) == (Classification.PERMANENT, 1027)
    assert caught.value.usage == Usage(output_tokens=2, estimated=True)  # the prompt's count never arrived


def test_openai_stream_cut_before_the_end_is_broken() -> None:
    body = sse((None, chunk({"content": "Hello"})))
    with pytest.raises(UpstreamError) as caught:
        call("openai", replying(body))
    assert (caught.value.error_type, caught.value.classification) == (
        "stream_broken",
        Classification.RETRYABLE,
    )


def test_openai_request_shape_and_params_left_alone() -> None:
    seen: list[httpx.Request] = []
    params = {
        "messages": [{"role": "user", "content": "hi"}],
        "stream_options": {"x": 1},
        "reasoning_split": True,
    }
    before = json.dumps(params, sort_keys=True)
    body = sse(
        (None, chunk({"content": "ok"}, finish="stop")),
        (None, {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
        (None, "[DONE]"),
    )
    call("openai", replying(body, seen=seen), params=params)
    sent = json.loads(seen[0].content)
    assert str(seen[0].url) == "https://api.minimax.io/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert sent == {
        **params,
        "model": "MiniMax-M2.7",
        "stream": True,
        "stream_options": {"x": 1, "include_usage": True},
    }
    assert json.dumps(params, sort_keys=True) == before


# --- Anthropic format ------------------------------------------------------------------------------------


def anthropic_stream(*, delta_usage: dict[str, Any], stop: bool = True) -> bytes:
    events: list[tuple[str | None, object]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "MiniMax-M2.7",
                    "content": [],
                    "stop_reason": None,
                    "usage": {"input_tokens": 39, "output_tokens": 1, "cache_read_input_tokens": 7},
                },
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Look it up."},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "abc123"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"q": "mini'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'max"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": delta_usage},
        ),
    ]
    if stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


@pytest.mark.parametrize(
    ("delta_usage", "expected"),
    [
        ({"output_tokens": 40}, Usage(input_tokens=39, output_tokens=40, cache_read_tokens=7)),
        (
            {
                "input_tokens": 39,
                "output_tokens": 40,
                "cache_read_input_tokens": 7,
                "cache_creation_input_tokens": None,
            },
            Usage(input_tokens=39, output_tokens=40, cache_read_tokens=7),
        ),
    ],
)
def test_anthropic_stream_usage_is_final_never_summed(delta_usage: dict[str, Any], expected: Usage) -> None:
    result = call("anthropic", replying(anthropic_stream(delta_usage=delta_usage)))
    assert result.usage == expected
    assert result.content == [
        {"type": "thinking", "thinking": "Look it up.", "signature": "abc123"},
        {"type": "tool_use", "id": "tu_1", "name": "lookup", "input": {"q": "minimax"}},
    ]
    assert (result.stop_reason, result.request_id, result.text) == ("tool_use", "msg_1", "")


def test_anthropic_stream_without_message_stop_is_broken_with_usage_so_far() -> None:
    with pytest.raises(UpstreamError) as caught:
        call("anthropic", replying(anthropic_stream(delta_usage={"output_tokens": 40}, stop=False)))
    error = caught.value
    assert (error.error_type, error.classification, error.request_id) == (
        "stream_broken",
        Classification.RETRYABLE,
        "msg_1",
    )
    # message_delta's output count is real; its input never came (message_start's is a placeholder).
    assert error.usage == Usage(output_tokens=40, estimated=True)


def test_anthropic_transport_failure_mid_body_is_stream_broken() -> None:
    def body() -> Iterator[bytes]:
        # Everything up to the end of the thinking block ("Look it up." streamed: ~3 tokens), then a cut.
        yield anthropic_stream(delta_usage={"output_tokens": 40}).split(b"event: content_block_stop")[0]
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    with pytest.raises(UpstreamError) as caught:
        call("anthropic", client_for(handler))
    assert caught.value.error_type == "stream_broken"
    # message_start's usage is a placeholder; what streamed is the estimate of the output billed, and the input
    # is left to the worker.
    assert caught.value.usage == Usage(output_tokens=3, estimated=True)


def test_anthropic_base_resp_in_a_200_answer() -> None:
    body = {
        "id": "m",
        "type": "message",
        "content": [],
        "base_resp": {"status_code": 1008, "status_msg": "insufficient balance"},
    }
    with pytest.raises(UpstreamError) as caught:
        call("anthropic", replying(body), stream=False)
    assert (caught.value.classification, caught.value.minimax_code) == (Classification.PERMANENT, 1008)


def test_anthropic_request_shape_and_count_tokens_fields() -> None:
    seen: list[httpx.Request] = []
    real = json.loads(
        (
            __import__("pathlib")
            .Path("/work/shared/seeds/004_de7596ff45c34efe.txt")
            .read_text()
            .split("'{", 1)[1]
            .split("}Use", 1)[0]
        ).join(["{", "}"])
    )
    params = {
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 100,
        "system": "be brief",
        "thinking": {"type": "adaptive"},
        "metadata": {"user_id": "u"},
    }
    result = call("anthropic", replying(real, seen=seen), stream=False, params=params)
    assert str(seen[0].url) == "https://api.minimax.io/anthropic/v1/messages"
    assert seen[0].headers["anthropic-version"] == "2023-06-01"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert json.loads(seen[0].content) == {**params, "model": "MiniMax-M2.7", "stream": False}
    # The real answer from the vendor page: thinking kept whole, usage mapped.
    assert result.content[0]["signature"] == "1c3a0ae890922669e9815a201f9b645abdaafe8d8b5a65a5e48f90830c6e0750"
    assert result.text == "Hello! How can I help you today?"
    assert result.usage == Usage(input_tokens=39, output_tokens=40)
    assert (result.request_id, result.stop_reason) == ("06379fa1dfdd9047604b8abc088ea75c", "end_turn")

    counted: list[httpx.Request] = []
    tokens = AnthropicProvider().count_tokens(
        client=replying({"input_tokens": 17}, seen=counted),
        base_url=BASE,
        api_key="sk-test",
        model="MiniMax-M3",
        params=params,
    )
    assert tokens == 17
    assert str(counted[0].url) == "https://api.minimax.io/anthropic/v1/messages/count_tokens"
    assert json.loads(counted[0].content) == {
        "model": "MiniMax-M3",
        "messages": params["messages"],
        "system": "be brief",
        "thinking": {"type": "adaptive"},
    }


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown upstream format"):
        get_provider("gemini")
