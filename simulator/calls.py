"""What both endpoints share: request checks, admission (limits, directives, faults), billing, hangs."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from simulator.directives import parse_directives
from simulator.errors import SimError, SimulatedDisconnect
from simulator.limits import Outcome
from simulator.models import DEFAULT_MAX_TOKENS, MODELS, ModelSpec
from simulator.state import SimState
from simulator.tokens import Generation, generate, media_kinds

Endpoint = Literal["anthropic", "openai"]

HANG_CAP_SECONDS = 3600.0
MAX_BODY_BYTES = 64 * 1024 * 1024  # the real API's documented request body limit


@dataclass(frozen=True, kw_only=True)
class Call:
    """A validated request, before the simulator decides what happens to it."""

    request_id: str
    endpoint: Endpoint
    api_key: str
    model: ModelSpec
    input_tokens: int
    max_tokens: int
    thinking: bool
    user_text: str
    stream: bool
    # The tool this call answers with (name, arguments as JSON text), when the request offered tools.
    tool: tuple[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """An admitted call and its fate: how long it takes, what it says, and how it may fail."""

    call: Call
    latency: float
    midstream: bool
    hang: bool
    base_resp_code: int | None
    generation: Generation
    # "input" / "output": MiniMax's content filter tripped; the answer is empty and flagged.
    sensitive: str | None = None


def new_request_id() -> str:
    return uuid.uuid4().hex


async def read_json(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise SimError(413, "request body too large", 2013)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise SimError(413, "request body too large", 2013)
    try:
        body = json.loads(raw)
    except ValueError:
        raise SimError.invalid("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise SimError.invalid("request body must be a JSON object")
    return body


def bearer_key(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def check_key(state: SimState, key: str | None) -> str:
    if not key:
        raise SimError(401, "not authorized, no api key provided", 1004)
    if key not in state.config.api_keys:
        raise SimError(401, "invalid api key", 2049)
    return key


def require_model(body: Mapping[str, Any]) -> ModelSpec:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise SimError.invalid("model is required")
    spec = MODELS.get(name)
    if spec is None:
        raise SimError.invalid(f"unknown model {name!r}")
    return spec


def require_messages(body: Mapping[str, Any], roles: frozenset[str]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SimError.invalid("messages must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in roles:
            raise SimError.invalid(f"messages[{index}].role must be one of {', '.join(sorted(roles))}")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise SimError.invalid(f"messages[{index}].content must be a string or a list of blocks")
    return messages


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SimError.invalid(f"{name} must be a number")
    if not low <= value <= high:
        raise SimError.invalid(f"{name} must be in [{low:g}, {high:g}], got {value}")


def check_sampling(body: Mapping[str, Any]) -> None:
    _number(body, "temperature", 0.0, 2.0)
    _number(body, "top_p", 0.0, 1.0)
    if not isinstance(body.get("stream", False), bool):
        raise SimError.invalid("stream must be a boolean")


def resolve_max_tokens(value: object, model: ModelSpec) -> int:
    """``max_tokens`` as the model will honour it: 8192 when absent, capped at the model's output limit."""
    if value is None:
        return min(DEFAULT_MAX_TOKENS, model.max_output_tokens)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimError.invalid(f"max_tokens must be an integer >= 1, got {value!r}")
    return min(value, model.max_output_tokens)


def thinking_type(body: Mapping[str, Any]) -> str | None:
    thinking = body.get("thinking")
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("disabled", "enabled", "adaptive"):
        raise SimError.invalid("thinking.type must be one of disabled, enabled, adaptive")
    return str(kind)


def check_fit(model: ModelSpec, messages: list[dict[str, Any]], input_tokens: int, max_tokens: int) -> None:
    media = media_kinds(messages)
    if media and not model.multimodal:
        kinds = " and ".join(sorted(media))
        raise SimError.invalid(f"model {model.name} does not support {kinds} input")
    if input_tokens + max_tokens > model.context_window:
        raise SimError.invalid("context window exceeds limit")


def admit(state: SimState, call: Call) -> Plan:
    """Apply directives, the rate limit and the configured faults; raise the error a rejected call gets."""
    try:
        directives = parse_directives(call.user_text)
    except ValueError as exc:
        raise SimError.invalid(str(exc)) from None
    config = state.config
    verdict = state.limiter.admit(
        api_key=call.api_key,
        model=call.model.name,
        input_tokens=call.input_tokens,
        rpm=config.rpm,
        tpm=config.tpm,
    )
    if verdict == "rpm":
        raise SimError(429, "rate limit exceeded, too many requests per minute", 1002)
    if verdict == "tpm":
        raise SimError(429, "token limit exceeded, too many tokens per minute", 1039)
    if directives.error is not None:
        raise SimError.for_code(directives.error)

    forced = directives.fault is not None or directives.base_resp is not None
    fault = directives.fault if forced else state.draw_fault()
    if fault == "429":
        raise SimError(429, "rate limit exceeded", 1002)
    if fault == "500":
        raise SimError(500, "unknown error", 1000)
    if fault == "529":
        raise SimError(529, "the server cluster is overloaded, please retry later", 1000)
    base_resp_code = directives.base_resp
    if base_resp_code is None and fault == "base_resp":
        base_resp_code = config.base_resp_code

    generation = generate(
        call.user_text,
        target_tokens=directives.output_tokens or config.output_tokens,
        max_tokens=call.max_tokens,
        thinking=call.thinking,
    )
    if directives.sensitive is not None:
        if call.endpoint == "anthropic":
            raise SimError.for_code(1026 if directives.sensitive == "input" else 1027)
        generation = Generation(thinking=None, text="", truncated=False)
    elif call.tool is not None and not generation.truncated:
        name, arguments = call.tool
        generation = replace(generation, text="", tool=(f"call_{call.request_id[:24]}", name, arguments))
    return Plan(
        call=call,
        latency=directives.latency if directives.latency is not None else state.draw_latency(),
        midstream=fault == "midstream",
        hang=fault == "hang",
        base_resp_code=base_resp_code,
        generation=generation,
        sensitive=directives.sensitive,
    )


def bill(state: SimState, plan: Plan, *, output_tokens: int, outcome: Outcome) -> None:
    call = plan.call
    state.ledger.record(
        request_id=call.request_id,
        format=call.endpoint,
        model=call.model.name,
        api_key=call.api_key,
        input_tokens=call.input_tokens,
        output_tokens=output_tokens,
        outcome=outcome,
    )
    state.limiter.add_output(api_key=call.api_key, model=call.model.name, output_tokens=output_tokens)
    state.stats.outcome(outcome)


async def wait_for_disconnect(request: Request, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds; True as soon as the client hangs up, False if it is still there."""
    if timeout <= 0:
        return False

    async def watch() -> None:
        # The body is already read, so the next ASGI message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(watch(), timeout=timeout)
    except TimeoutError:
        return False
    return True


CLIENT_CLOSED = 499  # nginx's convention; the client never sees it, it only marks the access log


async def answer_after_latency(state: SimState, request: Request, plan: Plan) -> bool:
    """Sleep the plan's latency; False (and the call billed) if the client left meanwhile."""
    started = time.monotonic()
    if await wait_for_disconnect(request, plan.latency):
        # The answer was being generated when the client left: the prompt and the share of the output generated
        # by then are billed, as hosted models do.
        done = min(1.0, (time.monotonic() - started) / plan.latency) if plan.latency > 0 else 1.0
        generated = math.floor(plan.generation.output_tokens * done)
        bill(state, plan, output_tokens=generated, outcome="client_disconnected")
        return False
    return True


async def hang(state: SimState, request: Request) -> Response:
    """Never answer: wait for the client to give up, for at most an hour."""
    if await wait_for_disconnect(request, HANG_CAP_SECONDS):
        state.stats.outcome("hang")
        return Response(status_code=CLIENT_CLOSED)
    raise SimError.for_code(1001)


def broken_json(body: bytes) -> StreamingResponse:
    """A 200 JSON answer whose connection drops halfway through the body."""

    async def chunks() -> AsyncIterator[bytes]:
        yield body[: len(body) // 2]
        raise SimulatedDisconnect("midstream fault: connection dropped mid-body")

    return StreamingResponse(chunks(), media_type="application/json", headers={"content-length": str(len(body))})


class Pacer:
    """Spreads a stream's deltas evenly over the call's latency.

    Each wait is measured from the stream's start rather than from the previous delta, so event-loop lag under
    heavy load does not pile up into calls much longer than configured.
    """

    def __init__(self, total_seconds: float, steps: int) -> None:
        self._interval = total_seconds / max(steps, 1)
        self._start = time.monotonic()
        self._count = 0

    async def next(self) -> None:
        self._count += 1
        await asyncio.sleep(max(0.0, self._start + self._count * self._interval - time.monotonic()))


_SCHEMA_VALUES: dict[str, Any] = {
    "string": "sim",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def choose_tool(body: Mapping[str, Any], messages: list[dict[str, Any]], endpoint: Endpoint) -> tuple[str, str] | None:
    """The tool call a request gets: the first tool offered, with its required arguments filled from the schema,
    unless `tool_choice` is none or the conversation just returned a tool result (then the model answers)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], Mapping):
        return None
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, Mapping) and choice.get("type") == "none"):
        return None
    last = messages[-1]
    content = last.get("content")
    if last.get("role") in ("tool", "function") or (
        isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") == "tool_result" for p in content)
    ):
        return None
    tool = tools[0]
    if endpoint == "openai":
        function = tool.get("function")
        tool = function if isinstance(function, Mapping) else {}
        schema = tool.get("parameters")
    else:
        schema = tool.get("input_schema")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise SimError.invalid("tools[0] needs a name")
    schema = schema if isinstance(schema, Mapping) else {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    arguments = {
        key: _SCHEMA_VALUES.get(str((properties.get(key) or {}).get("type")), "sim")
        for key in (required if isinstance(required, list) else [])
        if isinstance(key, str)
    }
    return name, json.dumps(arguments)
