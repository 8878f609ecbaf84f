"""MiniMax's Anthropic-compatible Messages API: `POST {base}/anthropic/v1/messages`."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import httpx

from workers.providers.base import Classification, Completion, ProgressCallback, UpstreamError, Usage
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

MESSAGES_PATH = "/anthropic/v1/messages"
COUNT_TOKENS_PATH = "/anthropic/v1/messages/count_tokens"
ANTHROPIC_VERSION = "2023-06-01"
COUNT_TOKENS_FIELDS = ("messages", "system", "tools", "thinking")


class AnthropicProvider:
    format = "anthropic"

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
        """Run one Messages request. `on_progress` gets the output tokens so far (estimated until the upstream
        reports them), at most once per delta and only when the number changes; if it raises, the stream is
        closed and the exception propagates unchanged."""
        url = endpoint(base_url, MESSAGES_PATH)
        body = {**minimax_media_labels(params), "model": model, "stream": stream}
        headers = _headers(api_key)
        if not stream:
            completion = to_completion(post_json(client, url, headers=headers, body=body), model=model)
            if on_progress is not None:
                on_progress(completion.usage.output_tokens)
            return completion
        meter = ProgressMeter(on_progress)
        return post_stream(
            client, url, headers=headers, body=body, consume=lambda r: _consume(r, model=model, meter=meter)
        )

    def count_tokens(
        self, *, client: httpx.Client, base_url: str, api_key: str, model: str, params: Mapping[str, Any]
    ) -> int:
        """Input tokens the request would use, without generating (MiniMax serves this for M3 only)."""
        body: dict[str, Any] = {"model": model}
        body.update({k: params[k] for k in COUNT_TOKENS_FIELDS if k in params})
        payload = post_json(client, endpoint(base_url, COUNT_TOKENS_PATH), headers=_headers(api_key), body=body)
        tokens = payload.get("input_tokens")
        if isinstance(tokens, bool) or not isinstance(tokens, int):
            raise invalid_response(f"count_tokens answer without input_tokens: {payload!r:.200}", http_status=200)
        return tokens


def _headers(api_key: str) -> dict[str, str]:
    return bearer_headers(api_key, {"anthropic-version": ANTHROPIC_VERSION})


def to_usage(usage: Any) -> Usage:
    if not isinstance(usage, Mapping):
        return Usage()
    return Usage(
        input_tokens=as_int(usage.get("input_tokens")),
        output_tokens=as_int(usage.get("output_tokens")),
        cache_read_tokens=as_int(usage.get("cache_read_input_tokens")),
        cache_write_tokens=as_int(usage.get("cache_creation_input_tokens")),
    )


def to_completion(raw: dict[str, Any], *, model: str) -> Completion:
    """Normalize a Messages answer. Blocks are kept as given (thinking blocks with their signature)."""
    content = raw.get("content")
    if raw.get("type") not in (None, "message") or not isinstance(content, list):
        raise invalid_response(
            f"not a Messages answer: {json.dumps(raw)[:200]}",
            http_status=200,
            request_id=raw.get("id") if isinstance(raw.get("id"), str) else None,
        )
    blocks = [copy.deepcopy(b) for b in content if isinstance(b, dict)]
    text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
    stop_reason = raw.get("stop_reason")
    request_id = raw.get("id")
    answered_model = raw.get("model")
    filtered = content_filter_error(
        raw,
        answered=bool(text.strip()) or any(b.get("type") == "tool_use" for b in blocks),
        usage=to_usage(raw.get("usage")),
        request_id=request_id if isinstance(request_id, str) else None,
    )
    if filtered is not None:
        raise filtered
    return Completion(
        content=blocks,
        text=text,
        stop_reason=stop_reason if isinstance(stop_reason, str) else None,
        usage=to_usage(raw.get("usage")),
        raw=raw,
        request_id=request_id if isinstance(request_id, str) else None,
        model=answered_model if isinstance(answered_model, str) and answered_model else model,
    )


def _consume(response: httpx.Response, *, model: str, meter: ProgressMeter) -> Completion:
    if not is_event_stream(response):  # answered with plain JSON despite stream=true
        return to_completion(checked_json(response), model=model)
    assembler = _MessageAssembler(meter, http_status=response.status_code)
    try:
        events = iter_events(response)
        for event in events:
            if assembler.handle(event.event, event_json(event, http_status=response.status_code)):
                drain(events)  # the connection is reused only once the body was read to its end
                break
        else:
            raise stream_broken(
                "stream ended before message_stop",
                http_status=response.status_code,
                usage=None,
                request_id=None,
            )
    except UpstreamError as error:
        if error.usage is None:
            error.usage = assembler.usage_so_far()
        if error.request_id is None:
            error.request_id = assembler.message_id
        raise
    return to_completion(assembler.message_dict(), model=model)


class _MessageAssembler:
    """Rebuilds the non-streamed Messages answer from stream events."""

    def __init__(self, meter: ProgressMeter, *, http_status: int) -> None:
        self._meter = meter
        self._http_status = http_status
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json_parts: dict[int, list[str]] = {}
        self._start_usage: Mapping[str, Any] = {}
        self._delta_usage: Mapping[str, Any] = {}
        self._delta: dict[str, Any] = {}

    @property
    def message_id(self) -> str | None:
        message_id = self._message.get("id") if self._message else None
        return message_id if isinstance(message_id, str) else None

    def handle(self, event_name: str, data: dict[str, Any]) -> bool:
        """Apply one event; True once the message is complete."""
        kind = data.get("type") if isinstance(data.get("type"), str) else event_name
        if kind == "error" or event_name == "error" or "base_resp" in data:
            error = payload_error(data, http_status=self._http_status)
            if error is not None:
                raise error
            if kind == "error" or event_name == "error":
                raise UpstreamError(
                    classification=Classification.RETRYABLE,
                    error_type="error",
                    message=f"error event without details: {data!r:.200}",
                    http_status=self._http_status,
                )
        if kind == "message_start":
            message = data.get("message")
            self._message = dict(message) if isinstance(message, Mapping) else {}
            usage = self._message.get("usage")
            self._start_usage = usage if isinstance(usage, Mapping) else {}
        elif kind == "content_block_start":
            block = data.get("content_block")
            index = as_int(data.get("index"))
            self._blocks[index] = copy.deepcopy(dict(block)) if isinstance(block, Mapping) else {}
            if self._blocks[index].get("type") in ("tool_use", "server_tool_use"):
                self._json_parts[index] = []
        elif kind == "content_block_delta":
            self._apply_delta(as_int(data.get("index")), data.get("delta"))
        elif kind == "content_block_stop":
            self._finish_block(as_int(data.get("index")))
        elif kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, Mapping):
                self._delta.update(delta)
            usage = data.get("usage")
            if isinstance(usage, Mapping):
                self._delta_usage = usage
                if usage.get("output_tokens") is not None:
                    self._meter.final(as_int(usage.get("output_tokens")))
        elif kind == "message_stop":
            if self._message is None:
                raise stream_broken(
                    "message_stop without message_start",
                    http_status=self._http_status,
                    usage=None,
                    request_id=None,
                )
            return True
        return False  # ping, and event types this version does not know

    def _apply_delta(self, index: int, delta: Any) -> None:
        if not isinstance(delta, Mapping):
            return
        block = self._blocks.setdefault(index, {})
        kind = delta.get("type")
        if kind == "text_delta":
            piece = str(delta.get("text") or "")
            block["text"] = str(block.get("text") or "") + piece
        elif kind == "thinking_delta":
            piece = str(delta.get("thinking") or "")
            block["thinking"] = str(block.get("thinking") or "") + piece
        elif kind == "signature_delta":
            block["signature"] = str(block.get("signature") or "") + str(delta.get("signature") or "")
            return
        elif kind == "input_json_delta":
            piece = str(delta.get("partial_json") or "")
            self._json_parts.setdefault(index, []).append(piece)
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta.get("citation"))
            return
        else:
            return
        self._meter.add_text(piece)

    def _finish_block(self, index: int) -> None:
        parts = self._json_parts.pop(index, None)
        if parts is None or index not in self._blocks:
            return
        raw_json = "".join(parts)
        if not raw_json:
            self._blocks[index].setdefault("input", {})
            return
        try:
            self._blocks[index]["input"] = json.loads(raw_json)
        except ValueError:
            self._blocks[index]["input"] = raw_json

    def _usage(self) -> dict[str, Any]:
        # message_delta carries the final counts; message_start's fill only the fields it lacks.
        # Never add the two.
        usage = {k: v for k, v in self._start_usage.items() if v is not None}
        usage.update({k: v for k, v in self._delta_usage.items() if v is not None})
        return usage

    def usage_so_far(self) -> Usage | None:
        """What the upstream billed before a failure. Only message_delta's usage is a bill: message_start's is a
        placeholder on MiniMax (input 0, a made-up cache figure), so without message_delta the output is counted
        from what streamed and the input is left to the caller (`estimated`). None: the answer never began."""
        if self._message is None:
            return None
        if self._delta_usage.get("output_tokens") is not None and self._delta_usage.get("input_tokens") is not None:
            return to_usage(self._delta_usage)
        delta_output = self._delta_usage.get("output_tokens")
        output = as_int(delta_output) if delta_output is not None else self._meter.estimate
        return Usage(output_tokens=output, estimated=True)

    def message_dict(self) -> dict[str, Any]:
        for index in list(self._json_parts):
            self._finish_block(index)
        message = dict(self._message or {})
        message["content"] = [self._blocks[i] for i in sorted(self._blocks)]
        for key in ("stop_reason", "stop_sequence"):
            if key in self._delta:
                message[key] = self._delta[key]
        message["usage"] = self._usage()
        return message
