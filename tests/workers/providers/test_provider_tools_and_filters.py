"""Tool calls, content-filter flags, M2-her and base URLs, end to end through the adapters against the simulator
(issue 15.2, 15.4, 15.5): the paths a real key meets on day one, run for real."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.workers.providers.conftest import ledger
from workers.providers import Classification, Completion, UpstreamError, Usage, get_provider
from workers.retry import slows_the_limiter

KEY = "sk-simulator"
FORMATS = ["anthropic", "openai"]
BOTH_MODES = [pytest.param(True, id="stream"), pytest.param(False, id="plain")]
WEATHER_ANTHROPIC = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                     "required": ["city", "days"]},
}  # fmt: skip
WEATHER_OPENAI = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": WEATHER_ANTHROPIC["input_schema"],
    },
}


def call(
    http: httpx.Client, base_url: str, fmt: str, params: dict[str, Any], *, stream: bool, model: str = "MiniMax-M3"
) -> Completion:
    return get_provider(fmt).call(
        client=http, base_url=base_url, api_key=KEY, model=model, params=params, stream=stream
    )


def failure(http: httpx.Client, base_url: str, fmt: str, params: dict[str, Any], *, stream: bool,
            model: str = "MiniMax-M3") -> UpstreamError:  # fmt: skip
    with pytest.raises(UpstreamError) as caught:
        call(http, base_url, fmt, params, stream=stream, model=model)
    return caught.value


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_tools_get_a_tool_call_then_the_result_gets_an_answer(
    http: httpx.Client, base_url: str, fmt: str, stream: bool
) -> None:
    tools = [WEATHER_ANTHROPIC if fmt == "anthropic" else WEATHER_OPENAI]
    ask = {"role": "user", "content": "Weather in Paris?"}
    first = call(http, base_url, fmt, {"messages": [ask], "tools": tools, "max_tokens": 512}, stream=stream)
    assert first.stop_reason == "tool_use"
    [tool_use] = [b for b in first.content if b["type"] == "tool_use"]
    assert tool_use["name"] == "get_weather"
    assert tool_use["input"] == {"city": "sim", "days": 1}
    assert isinstance(tool_use["id"], str)
    assert tool_use["id"]
    assert first.text == ""
    [entry] = ledger(http, base_url)
    assert first.usage.output_tokens == entry["output_tokens"]

    if fmt == "anthropic":
        replies: list[dict[str, Any]] = [
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sunny"}]},
        ]
    else:
        message = first.raw["choices"][0]["message"]
        replies = [
            {"role": "assistant", "content": message.get("content") or "", "tool_calls": message["tool_calls"]},
            {"role": "tool", "tool_call_id": tool_use["id"], "content": "sunny"},
        ]
    second = call(http, base_url, fmt, {"messages": [ask, *replies], "tools": tools, "max_tokens": 512}, stream=stream)
    assert second.stop_reason == "end_turn"
    assert second.text.startswith("SIM:")
    assert not [b for b in second.content if b["type"] == "tool_use"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_choice_none_answers_in_text(http: httpx.Client, base_url: str, fmt: str) -> None:
    tools = [WEATHER_ANTHROPIC if fmt == "anthropic" else WEATHER_OPENAI]
    choice: Any = {"type": "none"} if fmt == "anthropic" else "none"
    params = {"messages": [{"role": "user", "content": "hi"}], "tools": tools, "tool_choice": choice}
    result = call(http, base_url, fmt, params, stream=True)
    assert result.stop_reason == "end_turn"
    assert result.text.startswith("SIM:")


@pytest.mark.parametrize("stream", BOTH_MODES)
@pytest.mark.parametrize("side", ["input", "output"])
def test_flagged_empty_answer_is_a_permanent_content_filtered_failure(
    http: httpx.Client, base_url: str, side: str, stream: bool
) -> None:
    params = {"messages": [{"role": "user", "content": f"something [[sim:sensitive={side}]]"}]}
    error = failure(http, base_url, "openai", params, stream=stream)
    assert (error.error_type, error.classification) == ("content_filtered", Classification.PERMANENT)
    assert f"the {side}" in error.message
    [entry] = ledger(http, base_url)
    # Billed as MiniMax billed it (the prompt), recorded as a failure, not a success.
    assert error.usage == Usage(input_tokens=entry["input_tokens"], output_tokens=entry["output_tokens"])
    assert not slows_the_limiter(error)


def test_flagged_input_on_the_anthropic_api_is_a_permanent_1026(http: httpx.Client, base_url: str) -> None:
    params = {"messages": [{"role": "user", "content": "x [[sim:sensitive=input]]"}], "max_tokens": 64}
    error = failure(http, base_url, "anthropic", params, stream=True)
    assert (error.classification, error.minimax_code, error.http_status) == (Classification.PERMANENT, 1026, 400)


@pytest.mark.parametrize("stream", BOTH_MODES)
def test_m2_her_dialogue_roles_on_the_openai_format(http: httpx.Client, base_url: str, stream: bool) -> None:
    messages = [
        {"role": "system", "content": "You are Mira, a ship's cook."},
        {"role": "user_system", "content": "The user is a passenger."},
        {"role": "group", "content": "Galley crew"},
        {"role": "sample_message_user", "content": "What's for dinner?"},
        {"role": "sample_message_ai", "content": "Fish stew, as every night."},
        {"role": "user", "content": "Any dessert?"},
    ]
    result = call(http, base_url, "openai", {"messages": messages, "max_tokens": 2048}, stream=stream, model="M2-her")
    assert result.text.startswith("SIM:")
    assert [b["type"] for b in result.content] == ["text"]  # a dialogue model: no thinking


def test_m2_her_is_not_served_on_the_anthropic_format(http: httpx.Client, base_url: str) -> None:
    params = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    error = failure(http, base_url, "anthropic", params, stream=False, model="M2-her")
    assert (error.classification, error.minimax_code) == (Classification.PERMANENT, 2013)


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/anthropic", "/anthropic/"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_base_url_with_either_documented_suffix_reaches_both_formats(
    http: httpx.Client, base_url: str, fmt: str, suffix: str
) -> None:
    result = call(http, base_url + suffix, fmt, {"messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert result.text.startswith("SIM:")
