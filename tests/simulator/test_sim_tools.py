"""The official SDKs read the simulator's tool calls, M2-her answers and content-filter flags (issue 15.4)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from simulator.remote import SimulatorControl

SCHEMA: dict[str, object] = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def test_anthropic_sdk_reads_a_streamed_tool_use(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="MiniMax-M2.7",
        max_tokens=512,
        messages=[{"role": "user", "content": "Look it up"}],
        tools=[{"name": "search", "input_schema": SCHEMA}],
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert [b.type for b in message.content] == ["thinking", "tool_use"]  # M2.x always thinks
    tool = message.content[-1]
    assert tool.type == "tool_use"
    assert (tool.name, tool.input) == ("search", {"q": "sim"})


def test_openai_sdk_reads_tool_calls_streamed_and_plain(oai: openai.OpenAI, sim: SimulatorControl) -> None:
    tools: list[ChatCompletionToolParam] = [{"type": "function", "function": {"name": "search", "parameters": SCHEMA}}]
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Look it up"}]
    plain = oai.chat.completions.create(model="MiniMax-M3", messages=messages, tools=tools)
    assert plain.choices[0].finish_reason == "tool_calls"
    [call] = plain.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "search"
    assert json.loads(call.function.arguments) == {"q": "sim"}
    chunks = list(oai.chat.completions.create(model="MiniMax-M3", messages=messages, tools=tools, stream=True))
    arguments = ""
    finishes = []
    for chunk in chunks:
        for choice in chunk.choices:
            for delta_call in choice.delta.tool_calls or []:
                arguments += (delta_call.function.arguments or "") if delta_call.function else ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
    assert json.loads(arguments) == {"q": "sim"}
    assert finishes == ["tool_calls"]
    assert plain.usage is not None
    assert [e["output_tokens"] for e in sim.ledger()["entries"]] == [plain.usage.completion_tokens] * 2


def test_m2_her_answers_on_openai_and_is_refused_on_anthropic(oai: openai.OpenAI, claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "sample_message_user", "content": "Hi"}, {"role": "user", "content": "Hello"}]
    answer = oai.chat.completions.create(model="M2-her", messages=messages, max_tokens=2048)
    assert (answer.choices[0].message.content or "").startswith("SIM:")
    with pytest.raises(anthropic.BadRequestError, match="M2-her"):
        claude.messages.create(model="M2-her", max_tokens=64, messages=[{"role": "user", "content": "hi"}])


def test_flagged_input_is_an_empty_answer_with_the_flag(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.create(
        model="MiniMax-M2.7", messages=[{"role": "user", "content": "x [[sim:sensitive=input]]"}]
    ).model_dump()
    assert raw["choices"][0]["message"]["content"] == ""
    assert (raw["input_sensitive"], raw["input_sensitive_type"], raw["output_sensitive"]) == (True, 7, False)
