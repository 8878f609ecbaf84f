"""The OpenAI-compatible endpoint, driven by the official openai SDK."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import httpx
import openai
import pytest

from simulator.remote import SimulatorControl

USER = "List three risks in the supplier contract."
THINK = re.compile(r"^<think>\n(?P<thinking>.+)\n</think>\n\n(?P<text>.+)$", re.DOTALL)


def messages(text: str = USER) -> Any:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]


def test_m3_thinks_inline_by_default(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="MiniMax-M3", messages=messages())

    raw = completion.model_dump()
    assert raw["object"] == "chat.completion"
    assert raw["base_resp"] == {"status_code": 0, "status_msg": ""}  # text-chat-openai response example
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    match = THINK.match(choice.message.content or "")
    assert match is not None
    assert f"SIM:{hashlib.sha256(USER.encode()).hexdigest()[:12]} You said: {USER}" in match["text"]
    usage = completion.usage
    assert usage is not None
    assert usage.completion_tokens == 48
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0


def test_thinking_can_be_turned_off_on_m3_only(oai: openai.OpenAI) -> None:
    off = {"thinking": {"type": "disabled"}}
    m3 = oai.chat.completions.create(model="MiniMax-M3", messages=messages(), extra_body=off)
    m2 = oai.chat.completions.create(model="MiniMax-M2", messages=messages(), extra_body=off)

    assert (m3.choices[0].message.content or "").startswith("SIM:")
    assert (m2.choices[0].message.content or "").startswith("<think>\n")


def test_reasoning_split_moves_thinking_out_of_content(oai: openai.OpenAI) -> None:
    inline = oai.chat.completions.create(model="MiniMax-M2.7", messages=messages())
    split = oai.chat.completions.create(model="MiniMax-M2.7", messages=messages(), extra_body={"reasoning_split": True})

    match = THINK.match(inline.choices[0].message.content or "")
    assert match is not None
    message = split.choices[0].message.model_dump()
    assert message["content"] == match["text"]
    assert message["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "id": "reasoning-text-1",
            "format": "MiniMax-response-v1",
            "index": 0,
            "text": match["thinking"],
        }
    ]


@pytest.mark.parametrize("split", [False, True])
def test_stream_with_usage_assembles_to_the_plain_answer(oai: openai.OpenAI, split: bool) -> None:
    request: dict[str, Any] = {
        "model": "MiniMax-M3",
        "messages": messages(USER + " [[sim:output_tokens=200]]"),
        "extra_body": {"reasoning_split": split},
    }
    plain = oai.chat.completions.create(**request)
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request))

    *answer, usage_chunk = chunks
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert plain.usage is not None
    assert usage_chunk.usage.model_dump() == plain.usage.model_dump()
    assert all(chunk.usage is None for chunk in answer)
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert answer[-1].choices[0].finish_reason == "stop"
    content = "".join(chunk.choices[0].delta.content or "" for chunk in answer)
    assert content == plain.choices[0].message.content
    if split:
        reasoning = "".join(
            detail["text"]
            for chunk in answer
            for detail in (chunk.choices[0].delta.model_dump().get("reasoning_details") or [])
        )
        assert reasoning == plain.choices[0].message.model_dump()["reasoning_details"][0]["text"]


def test_stream_without_include_usage_has_no_usage_chunk(sim: SimulatorControl) -> None:
    body = {"model": "MiniMax-M2.7", "stream": True, "messages": messages()}
    response = httpx.post(
        sim.base_url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-simulator"}
    )

    lines = [line for line in response.text.splitlines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in response.text


def test_max_tokens_gives_finish_reason_length(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(
        model="MiniMax-M3", messages=messages(), max_completion_tokens=7, extra_body={"reasoning_split": True}
    )

    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 7


def test_max_tokens_above_the_model_limit_is_capped_not_refused(oai: openai.OpenAI) -> None:
    completion = oai.chat.completions.create(model="MiniMax-M3", messages=messages(), max_tokens=5_000_000)

    assert completion.choices[0].finish_reason == "stop"


def test_bad_key_raises_authentication_error_with_base_resp(sim: SimulatorControl) -> None:
    with openai.OpenAI(base_url=sim.base_url + "/v1", api_key="sk-nope", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="MiniMax-M3", messages=messages())

    response = caught.value.response.json()
    assert response == {
        "error": {"message": "invalid api key (2049)", "type": "authentication_error", "code": "2049"},
        "base_resp": {"status_code": 2049, "status_msg": "invalid api key"},
    }


def test_x_api_key_is_not_accepted_on_the_openai_endpoint(sim: SimulatorControl) -> None:
    response = httpx.post(
        sim.base_url + "/v1/chat/completions",
        json={"model": "MiniMax-M3", "messages": messages()},
        headers={"x-api-key": "sk-simulator"},
    )

    assert response.status_code == 401
    assert response.json()["base_resp"]["status_code"] == 1004


def test_invalid_temperature_is_a_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model="MiniMax-M3", messages=messages(), temperature=3)

    assert caught.value.code == "2013"
