"""The Anthropic-compatible endpoint: ``POST /anthropic/v1/messages`` and ``.../messages/count_tokens``."""

from __future__ import annotations

import asyncio
import json
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
from simulator.errors import SimError, status_message
from simulator.files import check_references
from simulator.state import SimState, StateDep
from simulator.tokens import Generation, input_tokens, last_user_text, pieces, text_tokens

router = APIRouter(prefix="/anthropic/v1")

_ROLES = frozenset({"user", "assistant"})
SUCCESS = {"status_code": 0, "status_msg": "success"}


def error_body(error: SimError) -> dict[str, Any]:
    return {
        "type": "error",
        "request_id": new_request_id(),
        "error": {"type": error.error_type, "message": error.message},
    }


def _api_key(state: SimState, request: Request) -> str:
    return check_key(state, bearer_key(request) or request.headers.get("x-api-key"))


def _input_tokens(state: SimState, body: dict[str, Any], messages: list[dict[str, Any]]) -> int:
    check_references(state, messages)
    files = state.files.size_of
    return input_tokens(system=body.get("system"), messages=messages, tools=body.get("tools"), files=files)


def _usage(plan: Plan, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": plan.call.input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _has_text_block(generation: Generation) -> bool:
    # A call cut off by max_tokens while still thinking ends with the thinking block alone; a tool call has none.
    return bool(generation.text) or (generation.thinking is None and generation.tool is None)


def _stop_reason(generation: Generation) -> str:
    if generation.tool is not None:
        return "tool_use"
    return "max_tokens" if generation.truncated else "end_turn"


def _tool_block(generation: Generation) -> dict[str, Any]:
    assert generation.tool is not None
    tool_id, name, arguments = generation.tool
    return {"type": "tool_use", "id": tool_id, "name": name, "input": json.loads(arguments)}


def message_body(plan: Plan) -> dict[str, Any]:
    generation = plan.generation
    content: list[dict[str, Any]] = []
    if generation.thinking is not None:
        content.append({"type": "thinking", "thinking": generation.thinking, "signature": generation.signature})
    if _has_text_block(generation):
        content.append({"type": "text", "text": generation.text})
    if generation.tool is not None:
        content.append(_tool_block(generation))
    # The fields of the documented answer (text-chat-anthropic: id, type, role, model, content, usage,
    # stop_reason, base_resp); no stop_sequence there, as MiniMax ignores stop_sequences.
    return {
        "id": plan.call.request_id,
        "type": "message",
        "role": "assistant",
        "model": plan.call.model.name,
        "content": content,
        "usage": _usage(plan, generation.output_tokens),
        "stop_reason": _stop_reason(generation),
        "base_resp": SUCCESS,
    }


@router.post("/messages")
async def create_message(request: Request, state: StateDep) -> Response:
    api_key = _api_key(state, request)
    body = await read_json(request)
    model = require_model(body)
    if "anthropic" not in model.endpoints:
        raise SimError.invalid(f"model {model.name} is not supported on the Anthropic-compatible API; use /v1")
    messages = require_messages(body, _ROLES)
    check_sampling(body)
    max_tokens = resolve_max_tokens(body.get("max_tokens"), model)
    tokens = _input_tokens(state, body, messages)
    check_fit(model, messages, tokens, max_tokens)
    call = Call(
        request_id=new_request_id(),
        endpoint="anthropic",
        api_key=api_key,
        model=model,
        input_tokens=tokens,
        max_tokens=max_tokens,
        thinking=model.thinking(endpoint_default=model.thinking_default_anthropic, requested=thinking_type(body)),
        user_text=last_user_text(messages),
        stream=bool(body.get("stream", False)),
        tool=choose_tool(body, messages, "anthropic"),
    )
    plan = admit(state, call)
    if plan.hang:
        return await hang(state, request)
    if plan.base_resp_code is not None:
        state.stats.outcome("base_resp")
        code = plan.base_resp_code
        return JSONResponse(
            {"id": call.request_id, "base_resp": {"status_code": code, "status_msg": status_message(code)}}
        )
    if call.stream:
        return StreamingResponse(
            _events(state, plan), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )
    if not await answer_after_latency(state, request, plan):
        return Response(status_code=CLIENT_CLOSED)
    message = message_body(plan)
    output_tokens = plan.generation.output_tokens
    if plan.midstream:
        # The answer was generated in full before the connection broke, so all of it is billed.
        bill(state, plan, output_tokens=output_tokens, outcome="midstream_error")
        return broken_json(json.dumps(message).encode())
    bill(state, plan, output_tokens=output_tokens, outcome="succeeded")
    return JSONResponse(message)


@router.post("/messages/count_tokens")
async def count_tokens(request: Request, state: StateDep) -> dict[str, int]:
    _api_key(state, request)
    body = await read_json(request)
    model = require_model(body)
    if model.name != "MiniMax-M3":
        raise SimError.invalid(f"count_tokens is not supported for model {model.name}")
    messages = require_messages(body, _ROLES)
    state.stats.outcome("count_tokens")
    return {"input_tokens": _input_tokens(state, body, messages)}


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _delta(index: int, kind: str, piece: str) -> bytes:
    key = {"thinking_delta": "thinking", "input_json_delta": "partial_json"}.get(kind, "text")
    return _sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": kind, key: piece}},
    )


async def _events(state: SimState, plan: Plan) -> AsyncIterator[bytes]:
    """The SSE stream: start and ping at once, then the deltas spread over the call's latency."""
    generation = plan.generation
    blocks: list[tuple[dict[str, Any], str, list[str]]] = []
    if generation.thinking is not None:
        blocks.append(
            (
                {"type": "thinking", "thinking": "", "signature": ""},
                "thinking_delta",
                pieces(generation.thinking),
            )
        )
    if _has_text_block(generation):
        blocks.append(({"type": "text", "text": ""}, "text_delta", pieces(generation.text)))
    if generation.tool is not None:
        tool_id, name, arguments = generation.tool
        start_block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
        blocks.append((start_block, "input_json_delta", pieces(arguments)))
    steps = sum(len(parts) for _, _, parts in blocks)
    cut = steps // 2 if plan.midstream else -1
    sent = sent_tokens = 0
    finished = False
    # MiniMax's message_start carries placeholder usage (input_tokens 0: the reference's "Usage fields"); the
    # true figures come in message_delta only, so a client that trusts message_start under-counts a broken stream.
    start = message_body(plan) | {"content": [], "stop_reason": None, "usage": _usage(plan, 1) | {"input_tokens": 0}}
    del start["base_resp"]
    try:
        pacer = Pacer(plan.latency, steps)
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("ping", {"type": "ping"})
        if steps == 0:
            await asyncio.sleep(plan.latency)
        for index, (block, kind, parts) in enumerate(blocks):
            yield _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
            for part in parts:
                if sent == cut:
                    bill(state, plan, output_tokens=sent_tokens, outcome="midstream_error")
                    finished = True
                    error = {"type": "api_error", "message": "stream interrupted (1000)"}
                    yield _sse("error", {"type": "error", "error": error})
                    return
                await pacer.next()
                yield _delta(index, kind, part)
                sent += 1
                sent_tokens += text_tokens(part)
            if kind == "thinking_delta":
                signature = {"type": "signature_delta", "signature": generation.signature}
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": signature})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
        bill(state, plan, output_tokens=generation.output_tokens, outcome="succeeded")
        finished = True
        stop = {"stop_reason": _stop_reason(generation)}
        usage = _usage(plan, generation.output_tokens)
        yield _sse("message_delta", {"type": "message_delta", "delta": stop, "usage": usage})
        yield _sse("message_stop", {"type": "message_stop"})
    finally:
        if not finished:
            # The client closed the stream (a cancel): the prompt and every token generated so far are billed.
            bill(state, plan, output_tokens=sent_tokens, outcome="client_disconnected")
