"""Rate limits, the billing ledger and the counters."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import anthropic
import httpx
import openai
import pytest

from simulator.remote import SimulatorControl


def say(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_rpm_limit_answers_429_past_the_limit(claude: anthropic.Anthropic, sim: SimulatorControl) -> None:
    sim.configure(rpm=3)
    for _ in range(3):
        claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))

    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))

    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.body["error"]["message"].endswith("(1002)")
    assert "retry-after" not in caught.value.response.headers
    stats = sim.stats()
    assert stats["rate_limited"] == 1
    assert stats["window"]["rpm_used"] == 3
    assert len(sim.ledger()["entries"]) == 3


def test_rpm_windows_are_per_key_and_model(claude: anthropic.Anthropic, sim: SimulatorControl) -> None:
    sim.configure(rpm=1)
    claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))
    claude.messages.create(model="MiniMax-M2.7", max_tokens=32, messages=say("hi"))
    with anthropic.Anthropic(base_url=sim.base_url + "/anthropic", api_key="sk-other-key-9876") as other:
        other.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))

    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))
    suffixes = {entry["api_key_suffix"] for entry in sim.ledger()["entries"]}
    assert suffixes == {"ator", "9876"}


def test_tpm_limit_counts_input_and_output_tokens(oai: openai.OpenAI, sim: SimulatorControl) -> None:
    first = oai.chat.completions.create(model="MiniMax-M2.7", messages=say("hi"))
    assert first.usage is not None
    used = first.usage.total_tokens
    # Room for one more call's input but not for the tokens the first call already billed.
    sim.reset()
    sim.configure(tpm=used + first.usage.prompt_tokens - 1)
    oai.chat.completions.create(model="MiniMax-M2.7", messages=say("hi"))

    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model="MiniMax-M2.7", messages=say("hi"))

    body = caught.value.response.json()
    assert body["base_resp"]["status_code"] == 1039
    assert body["error"]["message"].endswith("(1039)")


def test_reset_clears_the_limiter_ledger_and_counters(claude: anthropic.Anthropic, sim: SimulatorControl) -> None:
    sim.configure(rpm=1)
    claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))
    with pytest.raises(anthropic.RateLimitError):
        claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))

    sim.reset()

    assert sim.ledger()["entries"] == []
    assert sim.stats()["requests_total"] == 0
    claude.messages.create(model="MiniMax-M3", max_tokens=32, messages=say("hi"))


def test_ledger_matches_the_usage_every_client_received(
    claude: anthropic.Anthropic, oai: openai.OpenAI, sim: SimulatorControl
) -> None:
    seen: dict[str, tuple[int, int]] = {}
    message = claude.messages.create(model="MiniMax-M2.7", max_tokens=500, messages=say("one"))
    seen[message.id] = (message.usage.input_tokens, message.usage.output_tokens)
    with claude.messages.stream(
        model="MiniMax-M3", max_tokens=500, messages=say("two [[sim:output_tokens=77]]")
    ) as stream:
        streamed = stream.get_final_message()
    seen[streamed.id] = (streamed.usage.input_tokens, streamed.usage.output_tokens)
    completion = oai.chat.completions.create(model="MiniMax-M2.1", messages=say("three"))
    assert completion.usage is not None
    seen[completion.id] = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
    chunks = list(
        oai.chat.completions.create(
            model="MiniMax-M3", messages=say("four"), stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    seen[chunks[-1].id] = (usage.prompt_tokens, usage.completion_tokens)
    with pytest.raises(anthropic.InternalServerError):
        claude.messages.create(model="MiniMax-M3", max_tokens=64, messages=say("[[sim:fault=500]]"))

    ledger = sim.ledger()
    billed = {entry["request_id"]: (entry["input_tokens"], entry["output_tokens"]) for entry in ledger["entries"]}
    assert billed == seen
    assert [entry["format"] for entry in ledger["entries"]] == ["anthropic", "anthropic", "openai", "openai"]
    assert {entry["outcome"] for entry in ledger["entries"]} == {"succeeded"}
    assert ledger["totals"]["input_tokens"] == sum(tokens[0] for tokens in seen.values())
    assert ledger["totals"]["output_tokens"] == sum(tokens[1] for tokens in seen.values())
    assert ledger["totals"]["calls"] == 4


async def raw_post(host: str, port: int, path: str, body: bytes) -> int:
    """A bare HTTP/1.1 POST: far lighter than an SDK, so the client does not starve the server it shares a
    process with."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sk-simulator\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    response = await reader.read()
    writer.close()
    return int(response.split(b" ", 2)[1])


def test_a_thousand_concurrent_slow_calls_run_at_once(sim: SimulatorControl) -> None:
    # Each call lasts long enough for this test's one client loop to open all 1,000 connections first: at 3 s a
    # slow, shared machine (CI beside other work) had the first calls over before the last began (peak 899).
    calls, latency = 1000, 10
    body = json.dumps(
        {"model": "MiniMax-M3", "max_tokens": 64, "messages": say(f"patience [[sim:latency={latency}]]")}
    ).encode()
    url = httpx.URL(sim.base_url)
    host, port = url.host, url.port or 80

    async def run() -> list[int]:
        return await asyncio.gather(*(raw_post(host, port, "/anthropic/v1/messages", body) for _ in range(calls)))

    started = time.monotonic()
    statuses = asyncio.run(run())
    elapsed = time.monotonic() - started

    assert statuses == [200] * calls
    # Handled one at a time this would take 10,000 s; on one event loop it takes the latency plus overhead.
    assert elapsed < 5 * latency
    stats = sim.stats()
    assert stats["peak_in_flight"] == calls
    assert stats["in_flight"] == 0
    assert stats["by_outcome"]["succeeded"] == calls


def test_client_that_hangs_up_early_is_billed_for_what_was_generated(sim: SimulatorControl) -> None:
    body = {"model": "MiniMax-M3", "max_tokens": 64, "messages": say("slow [[sim:latency=2]]")}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            sim.base_url + "/anthropic/v1/messages",
            json=body,
            headers={"x-api-key": "sk-simulator"},
            timeout=httpx.Timeout(10, read=0.3),
        )

    deadline = time.monotonic() + 3
    while sim.stats()["by_outcome"].get("client_disconnected") != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The prompt was processed and the answer was being generated: billed like a hosted model bills a cancel,
    # for the prompt and the share of the output generated before the client left (0.3 s of 2 s).
    [entry] = sim.ledger()["entries"]
    assert entry["outcome"] == "client_disconnected"
    assert entry["input_tokens"] > 0
    assert 0 <= entry["output_tokens"] < 64
