"""Faults and directives, as each SDK observes them, and what the ledger bills for them."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from simulator.remote import SimulatorControl
from simulator.tokens import text_tokens


def say(text: str) -> Any:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    ("directive", "error_class", "status", "error_type", "message"),
    [
        (
            "[[sim:fault=429]]",
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
            "rate limit exceeded (1002)",
        ),
        ("[[sim:fault=500]]", anthropic.InternalServerError, 500, "api_error", "(1000)"),
        ("[[sim:fault=529]]", anthropic.OverloadedError, 529, "overloaded_error", "(1000)"),
        (
            "[[sim:error=2013]]",
            anthropic.BadRequestError,
            400,
            "invalid_request_error",
            "invalid params (2013)",
        ),
        (
            "[[sim:error=1008]]",
            anthropic.InternalServerError,
            500,
            "api_error",
            "insufficient balance (1008)",
        ),
        (
            "[[sim:error=2056]]",
            anthropic.RateLimitError,
            429,
            "rate_limit_error",
            "usage limit exceeded (2056)",
        ),
        ("[[sim:error=1004]]", anthropic.AuthenticationError, 401, "authentication_error", "(1004)"),
    ],
)
def test_error_directives_on_anthropic(
    claude: anthropic.Anthropic,
    sim: SimulatorControl,
    directive: str,
    error_class: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
    message: str,
) -> None:
    with pytest.raises(error_class) as caught:
        claude.messages.create(model="MiniMax-M2.7", max_tokens=64, messages=say(f"go {directive}"))

    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == error_type
    assert caught.value.body["error"]["message"].endswith(message)
    assert "retry-after" not in caught.value.response.headers
    assert sim.ledger()["entries"] == []


@pytest.mark.parametrize(
    ("directive", "error_class", "code"),
    [
        ("[[sim:fault=429]]", openai.RateLimitError, 1002),
        ("[[sim:fault=500]]", openai.InternalServerError, 1000),
        ("[[sim:fault=529]]", openai.InternalServerError, 1000),
        ("[[sim:error=2049]]", openai.AuthenticationError, 2049),
    ],
)
def test_error_directives_on_openai(
    oai: openai.OpenAI, directive: str, error_class: type[openai.APIStatusError], code: int
) -> None:
    with pytest.raises(error_class) as caught:
        oai.chat.completions.create(model="MiniMax-M3", messages=say(f"go {directive}"))

    assert caught.value.response.json()["base_resp"]["status_code"] == code
    assert caught.value.code == str(code)


def test_base_resp_fault_is_http_200_without_content(
    claude: anthropic.Anthropic, oai: openai.OpenAI, sim: SimulatorControl
) -> None:
    sim.configure(base_resp_code=1039)
    message = claude.messages.with_raw_response.create(
        model="MiniMax-M2.7", max_tokens=64, messages=say("[[sim:fault=base_resp]]")
    )
    completion = oai.chat.completions.with_raw_response.create(
        model="MiniMax-M3", messages=say("[[sim:base_resp=1008]]"), stream=True
    )

    assert message.status_code == completion.status_code == 200
    anthropic_body = message.http_response.json()
    assert anthropic_body["base_resp"] == {"status_code": 1039, "status_msg": "token limit exceeded"}
    assert "content" not in anthropic_body
    openai_body = json.loads(completion.http_response.read())
    assert openai_body["base_resp"] == {"status_code": 1008, "status_msg": "insufficient balance"}
    assert openai_body["choices"] is None
    assert sim.ledger()["entries"] == []
    assert sim.stats()["by_outcome"]["base_resp"] == 2


def test_anthropic_midstream_fault_sends_an_error_event_and_bills_what_was_sent(
    claude: anthropic.Anthropic, sim: SimulatorControl
) -> None:
    text = "Draft a memo [[sim:fault=midstream]] [[sim:output_tokens=200]]"
    events: list[Any] = []

    def read_stream() -> None:
        stream = claude.messages.create(model="MiniMax-M3", max_tokens=1024, messages=say(text), stream=True)
        events.extend(stream)

    with pytest.raises(anthropic.APIStatusError) as caught:
        read_stream()

    message_id = events[0].message.id
    received = "".join(
        event.delta.text for event in events if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "stream interrupted (1000)"},
    }
    assert 0 < text_tokens(received) < 200
    entry = sim.entry(message_id)
    assert entry is not None
    assert entry["outcome"] == "midstream_error"
    assert entry["output_tokens"] == text_tokens(received)
    assert entry["input_tokens"] == claude.messages.count_tokens(model="MiniMax-M3", messages=say(text)).input_tokens


def test_openai_midstream_fault_drops_the_connection(oai: openai.OpenAI, sim: SimulatorControl) -> None:
    text = "Draft a memo [[sim:fault=midstream]] [[sim:output_tokens=120]]"
    chunks: list[Any] = []

    def read_stream() -> None:
        chunks.extend(
            oai.chat.completions.create(
                model="MiniMax-M3",
                messages=say(text),
                stream=True,
                extra_body={"thinking": {"type": "disabled"}},
            )
        )

    with pytest.raises(openai.APIConnectionError):
        read_stream()

    chunk_id = chunks[0].id
    received = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert received.startswith("SIM:")
    entry = sim.entry(chunk_id)
    assert entry is not None
    assert entry["outcome"] == "midstream_error"
    assert entry["output_tokens"] == text_tokens(received)
    assert 0 < entry["output_tokens"] < 120


def test_midstream_fault_on_a_plain_call_breaks_the_body(
    claude: anthropic.Anthropic, oai: openai.OpenAI, sim: SimulatorControl
) -> None:
    with pytest.raises(anthropic.APIConnectionError):
        claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=say("[[sim:fault=midstream]]"))
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="MiniMax-M3", messages=say("[[sim:fault=midstream]]"))

    entries = sim.ledger()["entries"]
    assert [entry["outcome"] for entry in entries] == ["midstream_error", "midstream_error"]


def test_hang_never_answers_until_the_client_gives_up(sim: SimulatorControl) -> None:
    with anthropic.Anthropic(
        base_url=sim.base_url + "/anthropic", api_key="sk-simulator", max_retries=0, timeout=0.5
    ) as client:
        started = time.monotonic()
        with pytest.raises(anthropic.APITimeoutError):
            client.messages.create(model="MiniMax-M3", max_tokens=64, messages=say("[[sim:fault=hang]]"))
    assert time.monotonic() - started >= 0.5

    deadline = time.monotonic() + 5
    while sim.stats()["by_outcome"].get("hang") != 1:
        assert time.monotonic() < deadline, "the simulator never noticed the client hanging up"
        time.sleep(0.05)
    assert sim.stats()["in_flight"] == 0
    assert sim.ledger()["entries"] == []


def test_configured_fault_rate_applies_and_can_be_switched_off(
    claude: anthropic.Anthropic, sim: SimulatorControl
) -> None:
    sim.configure(faults="500=1")
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=say("hello"))

    sim.configure(faults="")
    assert claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=say("hello")).stop_reason == "end_turn"


def test_random_faults_follow_their_rates(sim: SimulatorControl) -> None:
    sim.configure(faults="429=0.3,529=0.2")
    body = {"model": "MiniMax-M3", "max_tokens": 16, "messages": say("count me")}
    with httpx.Client(base_url=sim.base_url, headers={"x-api-key": "sk-simulator"}) as http:
        statuses = [http.post("/anthropic/v1/messages", json=body).status_code for _ in range(300)]

    assert set(statuses) == {200, 429, 529}
    # Expected 90 / 60 / 150; the bounds are about six standard deviations wide.
    assert 45 < statuses.count(429) < 135
    assert 25 < statuses.count(529) < 100
    assert len(sim.ledger()["entries"]) == statuses.count(200)


def test_latency_directive_spreads_a_stream_over_the_duration(claude: anthropic.Anthropic) -> None:
    started = time.monotonic()
    arrivals = [
        time.monotonic() - started
        for _ in claude.messages.create(
            model="MiniMax-M3", max_tokens=256, messages=say("slow please [[sim:latency=1]]"), stream=True
        )
    ]

    assert arrivals[0] < 0.4
    assert 0.3 < arrivals[len(arrivals) // 2] < 0.8
    assert arrivals[-1] >= 1.0


def test_latency_setting_delays_a_plain_answer(oai: openai.OpenAI, sim: SimulatorControl) -> None:
    sim.configure(latency="0.4-0.6")
    started = time.monotonic()
    oai.chat.completions.create(model="MiniMax-M3", messages=say("hello"))

    assert 0.4 <= time.monotonic() - started < 1.5


@pytest.mark.parametrize("text", ["[[sim:fault=explode]]", "[[sim:colour=red]]", "[[sim:latency=soon]]"])
def test_malformed_directives_are_rejected(claude: anthropic.Anthropic, text: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match="sim directive"):
        claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=say(text))
