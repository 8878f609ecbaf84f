"""MiniMax's OpenAI-compatible Chat Completions API: `POST {base}/v1/chat/completions`.

MiniMax quirks handled here (seen on the live API): an error can arrive as HTTP 200 with `choices: null`
and a non-zero `base_resp`; stream chunks carry placeholder usage (`{"total_tokens": 0}`) until the end; the
stream may close with a whole `chat.completion` frame (`message`, not `delta`) that repeats the content and
carries the real usage; `delta.role` can be an empty string; `reasoning_details[].text` streams incrementally.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from workers.providers.base import Completion, ProgressCallback, UpstreamError, Usage
from workers.providers.errors import content_filter_error, invalid_response, payload_error, stream_broken
from workers.providers.labels import minimax_media_labels
from workers.providers.transport import (
    ProgressMeter,
    as_int,
    bearer_headers,
    checked_json,
    drain,
    endpoint,
    event_json,
    is_event_stream,
    iter_events,
    post_json,
    post_stream,
)

CHAT_PATH = "/v1/chat/completions"
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# MiniMax's content-filter flags, kept from any chunk into the assembled answer.
_FLAGS = ("input_sensitive", "output_sensitive", "input_sensitive_type", "output_sensitive_type")
_THINK = re.compile(r"\A\s*<think>(.*?)(?:</think>|\Z)(.*)\Z", re.DOTALL)
_THINK_TAGS = re.compile(r"\s*</?think>\s*")


class OpenAIProvider:
    format = "openai"

    def call(
        self,
        *,
        client: httpx.Client,
        base_url: str,
        api_key: str,
        model: str,
        params: Mapping[str, Any],
        stream: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> Completion:
        """Run one Chat Completions request (see `AnthropicProvider.call` for `on_progress`)."""
        url = endpoint(base_url, CHAT_PATH)
        headers = bearer_headers(api_key)
        body: dict[str, Any] = {**minimax_media_labels(params), "model": model, "stream": stream}
        if not stream:
            completion = to_completion(post_json(client, url, headers=headers, body=body), model=model)
            if on_progress is not None:
                on_progress(completion.usage.output_tokens)
            return completion
        # Without include_usage the stream carries no usage; keep any other stream_options the user set.
        stream_options = params.get("stream_options")
        body["stream_options"] = {
            **(stream_options if isinstance(stream_options, Mapping) else {}),
            "include_usage": True,
        }
        meter = ProgressMeter(on_progress)
        return post_stream(
            client, url, headers=headers, body=body, consume=lambda r: _consume(r, model=model, meter=meter)
        )


def to_usage(usage: Any) -> Usage:
    if not isinstance(usage, Mapping):
        return Usage()
    details = usage.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    return Usage(
        input_tokens=max(0, as_int(usage.get("prompt_tokens")) - cached),
        output_tokens=as_int(usage.get("completion_tokens")),
        cache_read_tokens=cached,
    )


def _thinking_and_text(message: Mapping[str, Any]) -> tuple[str, str]:
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    thinking = ""
    details = message.get("reasoning_details")
    if isinstance(details, list):
        thinking = "".join(d["text"] for d in details if isinstance(d, Mapping) and isinstance(d.get("text"), str))
    if not thinking and isinstance(message.get("reasoning_content"), str):
        thinking = message["reasoning_content"]
    if match := _THINK.match(text):
        # Thinking inline at the start of content (reasoning_split off). Unclosed: cut off while thinking.
        thinking = thinking or match.group(1).strip()
        text = match.group(2).lstrip()
    return thinking, text


def _tool_use(call: Mapping[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    function = function if isinstance(function, Mapping) else {}
    arguments = function.get("arguments")
    tool_input: Any = {}
    if isinstance(arguments, str) and arguments.strip():
        try:
            tool_input = json.loads(arguments)
        except ValueError:
            tool_input = arguments
    elif isinstance(arguments, Mapping):
        tool_input = dict(arguments)
    return {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": tool_input}


def to_completion(raw: dict[str, Any], *, model: str) -> Completion:
    """Normalize a Chat Completions answer to Anthropic-style blocks: thinking, text, tool_use."""
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise invalid_response(
            f"answer without choices: {json.dumps(raw)[:200]}",
            http_status=200,
            request_id=raw.get("id") if isinstance(raw.get("id"), str) else None,
        )
    choice = choices[0]
    message = choice.get("message")
    message = message if isinstance(message, Mapping) else {}
    thinking, text = _thinking_and_text(message)
    content: list[dict[str, Any]] = []
    if thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": None})
    if text:
        content.append({"type": "text", "text": text})
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        content.extend(_tool_use(c) for c in tool_calls if isinstance(c, Mapping))
    finish_reason = choice.get("finish_reason")
    request_id = raw.get("id")
    answered_model = raw.get("model")
    filtered = content_filter_error(
        raw,
        answered=bool(text.strip()) or any(b["type"] == "tool_use" for b in content),
        usage=to_usage(raw.get("usage")),
        request_id=request_id if isinstance(request_id, str) and request_id else None,
    )
    if filtered is not None:
        raise filtered
    return Completion(
        content=content,
        text=text,
        stop_reason=STOP_REASONS.get(finish_reason, finish_reason) if isinstance(finish_reason, str) else None,
        usage=to_usage(raw.get("usage")),
        raw=raw,
        request_id=request_id if isinstance(request_id, str) and request_id else None,
        model=answered_model if isinstance(answered_model, str) and answered_model else model,
    )


def _consume(response: httpx.Response, *, model: str, meter: ProgressMeter) -> Completion:
    if not is_event_stream(response):  # answered with plain JSON despite stream=true
        return to_completion(checked_json(response), model=model)
    assembler = _ChunkAssembler(meter)
    done = False
    try:
        events = iter_events(response)
        for event in events:
            if event.data.strip() == "[DONE]":
                done = True
                drain(events)  # the connection is reused only once the body was read to its end
                break
            chunk = event_json(event, http_status=response.status_code)
            error = payload_error(chunk, http_status=response.status_code)
            if error is not None:
                raise error
            assembler.add(chunk)
        # MiniMax's stream is whole once every choice finished and the real usage arrived, [DONE] or not.
        if not done and not assembler.complete:
            raise stream_broken(
                "stream ended before [DONE]", http_status=response.status_code, usage=None, request_id=None
            )
    except UpstreamError as error:
        if error.usage is None:
            error.usage = assembler.usage_so_far()
        if error.request_id is None:
            error.request_id = assembler.response_id
        raise
    return to_completion(assembler.completion_dict(), model=model)


class _Choice:
    def __init__(self, index: int) -> None:
        self.index = index
        self.role = "assistant"
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.details: dict[Any, dict[str, Any]] = {}
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.final_message: dict[str, Any] | None = None

    def message(self) -> dict[str, Any]:
        if self.final_message is not None and not (self.content or self.reasoning or self.tool_calls):
            return self.final_message  # only the closing frame carried the answer
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.content else None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.details:
            message["reasoning_details"] = list(self.details.values())
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


class _ChunkAssembler:
    """Rebuilds the non-streamed answer from chat.completion.chunk frames."""

    def __init__(self, meter: ProgressMeter) -> None:
        self._meter = meter
        self._head: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: dict[str, Any] | None = None

    @property
    def response_id(self) -> str | None:
        value = self._head.get("id")
        return value if isinstance(value, str) and value else None

    @property
    def complete(self) -> bool:
        return (
            bool(self._choices)
            and self._usage is not None
            and all(c.finish_reason is not None for c in self._choices.values())
        )

    def add(self, chunk: Mapping[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "base_resp", *_FLAGS):
            if chunk.get(key) not in (None, ""):
                self._head[key] = chunk[key]
        usage = chunk.get("usage")
        # Placeholders ({"total_tokens": 0}) ride on every MiniMax chunk; only real counts count.
        if isinstance(usage, Mapping) and ("prompt_tokens" in usage or "completion_tokens" in usage):
            self._usage = dict(usage)
            self._meter.final(as_int(usage.get("completion_tokens")))
        choices = chunk.get("choices")
        for raw_choice in choices if isinstance(choices, list) else []:
            if isinstance(raw_choice, Mapping):
                self._add_choice(raw_choice)

    def _add_choice(self, raw: Mapping[str, Any]) -> None:
        index = as_int(raw.get("index"))
        choice = self._choices.setdefault(index, _Choice(index))
        if isinstance(raw.get("finish_reason"), str) and raw["finish_reason"]:
            choice.finish_reason = raw["finish_reason"]
        if isinstance(raw.get("message"), Mapping):
            choice.final_message = copy.deepcopy(dict(raw["message"]))
        delta = raw.get("delta")
        if not isinstance(delta, Mapping):
            return
        if isinstance(delta.get("role"), str) and delta["role"]:
            choice.role = delta["role"]
        if isinstance(delta.get("content"), str):
            choice.content.append(delta["content"])
            # Inline <think> tags (reasoning_split off) are markup, not text the model wrote: counted, they would
            # over-bill a broken stream's output estimate.
            self._meter.add_text(_THINK_TAGS.sub("", delta["content"]))
        if isinstance(delta.get("reasoning_content"), str):
            choice.reasoning.append(delta["reasoning_content"])
            self._meter.add_text(delta["reasoning_content"])
        details = delta.get("reasoning_details")
        for position, detail in enumerate(details if isinstance(details, list) else []):
            if not isinstance(detail, Mapping):
                continue
            key = detail.get("index", detail.get("id", position))
            if not isinstance(key, str | int):
                key = position
            merged = choice.details.setdefault(key, {k: v for k, v in detail.items() if k != "text"})
            text = detail.get("text")
            piece = text if isinstance(text, str) else ""
            merged["text"] = str(merged.get("text") or "") + piece
            if not isinstance(delta.get("reasoning_content"), str):  # the same thinking, counted once
                self._meter.add_text(piece)
        tool_calls = delta.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else []:
            if isinstance(call, Mapping):
                self._add_tool_call(choice, call)

    def _add_tool_call(self, choice: _Choice, call: Mapping[str, Any]) -> None:
        index = as_int(call.get("index", len(choice.tool_calls)))
        merged = choice.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}}
        )
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        function = call.get("function")
        if isinstance(function, Mapping):
            if function.get("name"):
                merged["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                merged["function"]["arguments"] += function["arguments"]
                self._meter.add_text(function["arguments"])

    def usage_so_far(self) -> Usage | None:
        """Billed tokens before a failure: the real counts if they arrived, else the output counted from what
        streamed, with the input left to the caller (`estimated`: the prompt's count comes only at the end).
        None: no chunk ever arrived."""
        if not self._head and not self._choices:
            return None
        if self._usage is not None:
            return to_usage(self._usage)
        return Usage(output_tokens=self._meter.estimate, estimated=True)

    def completion_dict(self) -> dict[str, Any]:
        raw: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
            "choices": [
                {"index": c.index, "message": c.message(), "finish_reason": c.finish_reason}
                for c in (self._choices[i] for i in sorted(self._choices))
            ],
            "usage": self._usage,
        }
        for key in ("system_fingerprint", "base_resp", *_FLAGS):
            if key in self._head:
                raw[key] = self._head[key]
        return raw
