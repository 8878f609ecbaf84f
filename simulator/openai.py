"""The OpenAI-compatible endpoint: ``POST /v1/chat/completions``, plain and streamed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from simulator.calls import (
    CLIENT_CLOSED,
    Call,
    Pacer,
    Plan,
    admit,
    answer_after_latency,
    bearer_key,
    bill,
    broken_json,
    check_fit,
    check_key,
    check_sampling,
    choose_tool,
    hang,
    new_request_id,
    read_json,
    require_messages,
    require_model,
    resolve_max_tokens,
    thinking_type,
)
from simulator.errors import SimError, SimulatedDisconnect, status_message
from simulator.files import check_references
from simulator.state import SimState, StateDep
from simulator.tokens import input_tokens, last_user_text, pieces, text_tokens

router = APIRouter(prefix="/v1")

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# M2-her's dialogue roles (text-chat page: "rich role settings (system, user_system, group, etc.) and example
# dialogue learning").
_M2_HER_ROLES = frozenset({"user_system", "group", "sample_message_user", "sample_message_ai"})
# The OpenAI-format answer says success with an empty message (text-chat-openai response example).
SUCCESS = {"status_code": 0, "status_msg": ""}
# The content-filter fields every documented answer carries (text-chat-openai response example).
_SENSITIVE_TYPE_OTHER = 7
THINK_OPEN = "<think>\n"
THINK_CLOSE = "\n</think>\n\n"


def error_body(error: SimError) -> dict[str, Any]:
    return {
        "error": {"message": error.message, "type": error.error_type, "code": str(error.code)},
        "base_resp": {"status_code": error.code, "status_msg": error.status_msg},
    }


def _reasoning(text: str) -> dict[str, Any]:
    return {
        "type": "reasoning.text",
        "id": "reasoning-text-1",
        "format": "MiniMax-response-v1",
        "index": 0,
        "text": text,
    }


def _usage(plan: Plan, output_tokens: int) -> dict[str, Any]:
    """The documented usage object (text-chat-openai response example), plus `prompt_tokens_details` which the
    reference lists for cache reads."""
    prompt = plan.call.input_tokens
    thinking = plan.generation.thinking
    return {
        "total_tokens": prompt + output_tokens,
        "total_characters": 0,
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "completion_tokens_details": {"reasoning_tokens": min(output_tokens, text_tokens(thinking or ""))},
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def _flags(plan: Plan) -> dict[str, Any]:
    """`input_sensitive` / `output_sensitive` and their types, as every documented answer carries them."""
    return {
        "input_sensitive": plan.sensitive == "input",
        "output_sensitive": plan.sensitive == "output",
        "input_sensitive_type": _SENSITIVE_TYPE_OTHER if plan.sensitive == "input" else 0,
        "output_sensitive_type": _SENSITIVE_TYPE_OTHER if plan.sensitive == "output" else 0,
        "output_sensitive_int": 0,
    }


def _finish_reason(plan: Plan) -> str:
    if plan.generation.tool is not None:
        return "tool_calls"
    return "length" if plan.generation.truncated else "stop"


def _tool_calls(plan: Plan) -> list[dict[str, Any]]:
    if plan.generation.tool is None:
        return []
    tool_id, name, arguments = plan.generation.tool
    return [{"id": tool_id, "type": "function", "function": {"name": name, "arguments": arguments}}]


def completion_body(plan: Plan, *, split: bool) -> dict[str, Any]:
    generation = plan.generation
    message: dict[str, Any] = {
        "content": generation.text,
        "role": "assistant",
        "name": "MiniMax AI",
        "audio_content": "",
    }
    if generation.thinking is not None:
        if split:
            # reasoning_split: thinking in reasoning_content and reasoning_details, content the answer alone.
            message["reasoning_content"] = generation.thinking
            message["reasoning_details"] = [_reasoning(generation.thinking)]
        else:
            message["content"] = f"{THINK_OPEN}{generation.thinking}{THINK_CLOSE}{generation.text}"
    if generation.tool is not None:
        message["tool_calls"] = _tool_calls(plan)
    return {
        "id": plan.call.request_id,
        "choices": [{"finish_reason": _finish_reason(plan), "index": 0, "message": message}],
        "created": int(time.time()),
        "model": plan.call.model.name,
        "object": "chat.completion",
        "usage": _usage(plan, generation.output_tokens),
        **_flags(plan),
        "base_resp": SUCCESS,
    }


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise SimError.invalid(f"{name} must be a boolean")
    return value


@router.post("/chat/completions")
async def create_completion(request: Request, state: StateDep) -> Response:
    api_key = check_key(state, bearer_key(request))
    body = await read_json(request)
    model = require_model(body)
    messages = require_messages(body, _ROLES | _M2_HER_ROLES if model.name == "M2-her" else _ROLES)
    check_sampling(body)
    max_tokens = resolve_max_tokens(body.get("max_completion_tokens", body.get("max_tokens")), model)
    check_references(state, messages)
    tokens = input_tokens(system=None, messages=messages, tools=body.get("tools"), files=state.files.size_of)
    check_fit(model, messages, tokens, max_tokens)
    split = _flag(body, "reasoning_split")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    call = Call(
        request_id=new_request_id(),
        endpoint="openai",
        api_key=api_key,
        model=model,
        input_tokens=tokens,
        max_tokens=max_tokens,
        thinking=model.thinking(endpoint_default=model.thinking_default_openai, requested=thinking_type(body)),
        user_text=last_user_text(messages),
        stream=_flag(body, "stream"),
        tool=choose_tool(body, messages, "openai"),
    )
    plan = admit(state, call)
    if plan.hang:
        return await hang(state, request)
    if plan.base_resp_code is not None:
        state.stats.outcome("base_resp")
        code = plan.base_resp_code
        return JSONResponse(
            {
                "id": call.request_id,
                "choices": None,
                "base_resp": {"status_code": code, "status_msg": status_message(code)},
            }
        )
    if call.stream:
        return StreamingResponse(
            _chunks(state, plan, split=split, include_usage=include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    if not await answer_after_latency(state, request, plan):
        return Response(status_code=CLIENT_CLOSED)
    completion = completion_body(plan, split=split)
    output_tokens = plan.generation.output_tokens
    if plan.midstream:
        # Generated in full before the connection broke, so billed in full.
        bill(state, plan, output_tokens=output_tokens, outcome="midstream_error")
        return broken_json(json.dumps(completion).encode())
    bill(state, plan, output_tokens=output_tokens, outcome="succeeded")
    return JSONResponse(completion)


def _deltas(plan: Plan, *, split: bool) -> list[tuple[dict[str, Any], int]]:
    """Each delta with the output tokens it carries; think tags carry none and go out without a pause."""
    generation = plan.generation
    deltas: list[tuple[dict[str, Any], int]] = []
    if generation.thinking is not None:
        thought = pieces(generation.thinking)
        if split:
            deltas += [
                ({"reasoning_content": part, "reasoning_details": [_reasoning(part)]}, text_tokens(part))
                for part in thought
            ]
        else:
            deltas.append(({"content": THINK_OPEN}, 0))
            deltas += [({"content": part}, text_tokens(part)) for part in thought]
            deltas.append(({"content": THINK_CLOSE}, 0))
    deltas += [({"content": part}, text_tokens(part)) for part in pieces(generation.text)]
    if generation.tool is not None:
        tool_id, name, arguments = generation.tool
        head = {"index": 0, "id": tool_id, "type": "function", "function": {"name": name, "arguments": ""}}
        deltas.append(({"tool_calls": [head]}, 0))
        deltas += [
            ({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, text_tokens(part))
            for part in pieces(arguments)
        ]
    return deltas


async def _chunks(state: SimState, plan: Plan, *, split: bool, include_usage: bool) -> AsyncIterator[bytes]:
    call = plan.call
    created = int(time.time())

    def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        data = {
            "id": call.request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.model.name,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

    def choice(delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": delta, "finish_reason": finish_reason}]

    deltas = _deltas(plan, split=split)
    steps = sum(1 for _, tokens in deltas if tokens)
    cut = steps // 2 if plan.midstream else -1
    sent = sent_tokens = 0
    finished = False
    try:
        pacer = Pacer(plan.latency, steps)
        yield frame(choice({"role": "assistant", "content": ""}))
        if steps == 0:
            await asyncio.sleep(plan.latency)
        for delta, tokens in deltas:
            if tokens:
                if sent == cut:
                    bill(state, plan, output_tokens=sent_tokens, outcome="midstream_error")
                    finished = True
                    raise SimulatedDisconnect("midstream fault: stream dropped")
                await pacer.next()
                sent += 1
                sent_tokens += tokens
            yield frame(choice(delta))
        bill(state, plan, output_tokens=plan.generation.output_tokens, outcome="succeeded")
        finished = True
        yield frame(choice({}, _finish_reason(plan)), **(_flags(plan) if plan.sensitive else {}))
        if include_usage:
            yield frame([], usage=_usage(plan, plan.generation.output_tokens))
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            # The client closed the stream (a cancel): the prompt and every token generated so far are billed.
            bill(state, plan, output_tokens=sent_tokens, outcome="client_disconnected")
