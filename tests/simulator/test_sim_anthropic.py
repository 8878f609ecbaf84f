"""The Anthropic-compatible endpoint, driven by the official anthropic SDK."""

from __future__ import annotations

import hashlib
from typing import Any

import anthropic
import httpx
import pytest

from simulator.remote import SimulatorControl

USER = "Summarise the quarterly report for the board, please."


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ask(client: anthropic.Anthropic, text: str = USER, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", "MiniMax-M2.7")
    kwargs.setdefault("max_tokens", 1024)
    message: anthropic.types.Message = client.messages.create(messages=[{"role": "user", "content": text}], **kwargs)
    return message


def blocks(message: anthropic.types.Message) -> list[dict[str, Any]]:
    return [block.model_dump(exclude_none=True) for block in message.content]


def test_plain_answer_has_the_seed_shape_and_the_deterministic_text(claude: anthropic.Anthropic) -> None:
    message = ask(claude, model="MiniMax-M2.7")

    raw = message.model_dump()
    assert raw["type"] == "message"
    assert raw["role"] == "assistant"
    assert raw["model"] == "MiniMax-M2.7"
    assert raw["stop_reason"] == "end_turn"
    assert raw["stop_sequence"] is None
    assert raw["base_resp"] == {"status_code": 0, "status_msg": "success"}
    assert len(message.id) == 32
    text = message.content[-1]
    assert text.type == "text"
    assert f"SIM:{fingerprint(USER)}" in text.text
    assert USER[:60] in text.text
    assert message.usage.output_tokens == 48
    assert message.usage.cache_read_input_tokens == 0
    assert message.usage.cache_creation_input_tokens == 0


def test_m2_models_always_think_with_a_signed_thinking_block(claude: anthropic.Anthropic) -> None:
    message = ask(claude, model="MiniMax-M2.5", thinking={"type": "disabled"})

    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking
    assert thinking.signature == hashlib.sha256(thinking.thinking.encode()).hexdigest()
    assert text.type == "text"


def test_m3_thinks_only_when_asked(claude: anthropic.Anthropic) -> None:
    quiet = ask(claude, model="MiniMax-M3")
    thinking = ask(claude, model="MiniMax-M3", thinking={"type": "adaptive"})

    assert [block.type for block in quiet.content] == ["text"]
    assert [block.type for block in thinking.content] == ["thinking", "text"]
    # Thinking is part of the same output budget, so both answers bill the same number of tokens.
    assert quiet.usage.output_tokens == thinking.usage.output_tokens == 48


@pytest.mark.parametrize("model", ["MiniMax-M2.7", "MiniMax-M3"])
def test_streamed_message_assembles_to_the_plain_answer(claude: anthropic.Anthropic, model: str) -> None:
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": USER + " [[sim:output_tokens=300]]"}],
    }
    plain = claude.messages.create(**request)
    with claude.messages.stream(**request) as stream:
        streamed = stream.get_final_message()

    assert blocks(streamed) == blocks(plain)
    assert streamed.usage.model_dump() == plain.usage.model_dump()
    assert streamed.stop_reason == plain.stop_reason == "end_turn"
    assert streamed.usage.output_tokens == 300


def test_raw_stream_follows_the_event_order(claude: anthropic.Anthropic) -> None:
    events = list(
        claude.messages.create(
            model="MiniMax-M2.7",
            max_tokens=1024,
            messages=[{"role": "user", "content": USER}],
            stream=True,
        )
    )

    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start"
    assert delta.type == "message_delta"
    assert start.message.content == []
    assert start.message.usage.output_tokens <= 1
    assert delta.usage.output_tokens == 48
    # As MiniMax publishes it: message_start's usage is a placeholder (input 0); the true input is in message_delta.
    assert start.message.usage.input_tokens == 0
    assert delta.usage.input_tokens is not None
    assert delta.usage.input_tokens > 0
    delta_kinds = [event.delta.type for event in events if event.type == "content_block_delta"]
    first_text = delta_kinds.index("text_delta")
    assert set(delta_kinds[: first_text - 1]) == {"thinking_delta"}
    assert delta_kinds[first_text - 1] == "signature_delta"
    assert set(delta_kinds[first_text:]) == {"text_delta"}


def test_ping_is_sent_after_message_start(sim: SimulatorControl) -> None:
    body = {
        "model": "MiniMax-M3",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = httpx.post(
        sim.base_url + "/anthropic/v1/messages", json=body, headers={"Authorization": "Bearer sk-simulator"}
    )

    assert response.headers["content-type"].startswith("text/event-stream")
    names = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-1] == "message_stop"


def test_bearer_token_auth_is_accepted(sim: SimulatorControl) -> None:
    with anthropic.Anthropic(base_url=sim.base_url + "/anthropic", auth_token="sk-simulator") as client:
        assert ask(client).stop_reason == "end_turn"


def test_bad_key_raises_authentication_error(sim: SimulatorControl) -> None:
    with anthropic.Anthropic(base_url=sim.base_url + "/anthropic", api_key="sk-wrong", max_retries=0) as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            ask(client)

    assert caught.value.status_code == 401
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"] == {"type": "authentication_error", "message": "invalid api key (2049)"}
    assert sim.ledger()["entries"] == []


def test_count_tokens_equals_billed_input_tokens(claude: anthropic.Anthropic) -> None:
    request: dict[str, Any] = {
        "model": "MiniMax-M3",
        "system": "You are a careful analyst.",
        "tools": [{"name": "lookup", "description": "Find a row", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "First question about revenue."},
            {"role": "assistant", "content": "Revenue grew."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And this chart?"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                ],
            },
        ],
    }
    counted = claude.messages.count_tokens(**request)
    message = claude.messages.create(max_tokens=256, **request)

    assert counted.input_tokens == message.usage.input_tokens
    # An image at default detail costs 1500 tokens: the total must include it.
    assert counted.input_tokens > 1500


def test_count_tokens_is_m3_only(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"\(2013\)"):
        claude.messages.count_tokens(model="MiniMax-M2.7", messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": "MiniMax-M9"}, "unknown model"),
        ({"extra_body": {"temperature": 2.5}}, "temperature"),
        ({"extra_body": {"top_p": 1.5}}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": "MiniMax-M2.7", "max_tokens": 204_800}, "context window exceeds limit (2013)"),
    ],
)
def test_invalid_requests_are_400(claude: anthropic.Anthropic, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        ask(claude, **overrides)

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert message in caught.value.body["error"]["message"]
    assert caught.value.body["error"]["message"].endswith("(2013)")


def test_media_is_refused_by_text_only_models(claude: anthropic.Anthropic) -> None:
    content: Any = [
        {"type": "text", "text": "What is in this video?"},
        {"type": "video", "source": {"type": "url", "url": "https://example.com/v.mp4"}},
    ]
    with pytest.raises(anthropic.BadRequestError, match="does not support video"):
        claude.messages.create(model="MiniMax-M2.1", max_tokens=64, messages=[{"role": "user", "content": content}])

    message = claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=[{"role": "user", "content": content}])
    assert message.usage.input_tokens > 4000


def test_max_tokens_cuts_the_answer(claude: anthropic.Anthropic) -> None:
    message = ask(claude, model="MiniMax-M3", max_tokens=10)

    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 10
    assert len(blocks(message)[0]["text"]) == 40
