"""HTTP plumbing both adapters share: posting, opening a stream, reading events, estimating progress."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import httpx

from service.minimax_url import normalize_base_url
from workers import stopping
from workers.providers.base import ProgressCallback
from workers.providers.errors import invalid_response, payload_error, response_error, transport_error
from workers.providers.sse import ServerSentEvent, iter_sse

T = TypeVar("T")
# How long the rest of a whole answer is read for (`drain`); the openai SDK gives it 0.1 s too.
DRAIN_SECONDS = 0.1


def endpoint(base_url: str, path: str) -> str:
    """`path` under the base URL's root, whichever documented form the base was given in (`.../v1`,
    `.../anthropic`, a trailing slash): settings normalise it already, this covers copies made around them."""
    return normalize_base_url(base_url) + path


def bearer_headers(api_key: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if extra:
        headers.update(extra)
    return headers


def post_json(client: httpx.Client, url: str, *, headers: Mapping[str, str], body: Mapping[str, Any]) -> dict[str, Any]:
    """POST and return the JSON object answered; raise `UpstreamError` for any failure, including a 200 that
    carries an `error` object or a non-zero `base_resp`. Sent as a stream too, so that a connection lost
    while the body arrives is told apart from one that never got an answer."""

    def consume(response: httpx.Response) -> dict[str, Any]:
        read_body(response)
        return checked_json(response)

    return post_stream(client, url, headers=headers, body=body, consume=consume)


def checked_json(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a fully read answer, or the `UpstreamError` it stands for."""
    if response.status_code >= 400:
        raise response_error(response)
    try:
        payload = json.loads(response.content)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_response(
            f"answer is not JSON: {response.content[:200]!r}", http_status=response.status_code
        ) from exc
    if not isinstance(payload, dict):
        raise invalid_response("answer is not a JSON object", http_status=response.status_code)
    error = payload_error(payload, http_status=response.status_code)
    if error is not None:
        raise error
    return payload


def post_stream(
    client: httpx.Client,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    consume: Callable[[httpx.Response], T],
) -> T:
    """Open a streamed POST and hand the response to `consume`; the stream closes when it returns or raises.

    Failures before the answer starts become `UpstreamError`s here; `consume` maps its own failures, and
    whatever else it raises (a progress callback's exception) passes through unchanged."""
    opened = False
    try:
        with client.stream("POST", url, json=dict(body), headers=dict(headers)) as response:
            opened = True
            if response.status_code >= 400:
                read_quietly(response)
                raise response_error(response)
            if not is_event_stream(response):
                read_body(response)  # an error (or a whole answer) sent as plain JSON despite stream=true
            return consume(response)
    except httpx.RequestError as exc:
        if opened:
            raise
        raise transport_error(exc, in_body=False) from exc


def read_body(response: httpx.Response) -> None:
    try:
        response.read()
    except httpx.RequestError as exc:
        raise transport_error(exc, in_body=True) from exc


def read_quietly(response: httpx.Response) -> None:
    """Read an error answer's body; if the connection fails meanwhile, classify by the status alone."""
    try:
        response.read()
    except (httpx.RequestError, httpx.StreamError):
        pass


def is_event_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == "text/event-stream"


def iter_events(response: httpx.Response) -> Iterator[ServerSentEvent]:
    """The response's SSE events; a transport failure mid-body becomes an `UpstreamError` (stream_broken, or
    read_timeout for a hung upstream)."""
    events = iter_sse(response.iter_bytes())
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except httpx.RequestError as exc:
            raise transport_error(exc, in_body=True) from exc
        yield event


def drain(events: Iterator[ServerSentEvent]) -> None:
    """The answer is whole (message_stop, [DONE]): read what is left of the body, the end of its chunked encoding,
    for at most DRAIN_SECONDS. An HTTP/1.1 connection goes back to the pool only once its response was read to the
    end; one left unread is closed, and the next call pays a new TCP and TLS handshake. The official SDKs consume
    the rest of the stream the same way (the openai SDK within 0.1 s). Nothing read or raised here changes the
    answer: an upstream that keeps the stream open is cut off at the bound, its connection closed."""
    with stopping.reads_within(DRAIN_SECONDS):
        try:
            for _ in events:
                pass
        except Exception:  # whatever the tail holds (a cut, bytes that do not decode), the answer stands
            pass


def event_json(event: ServerSentEvent, *, http_status: int) -> dict[str, Any]:
    try:
        payload = json.loads(event.data)
    except ValueError as exc:
        raise invalid_response(f"event data is not JSON: {event.data[:200]!r}", http_status=http_status) from exc
    if not isinstance(payload, dict):
        raise invalid_response("event data is not a JSON object", http_status=http_status)
    return payload


class ProgressMeter:
    """Estimates output tokens from streamed characters (4 per token, rounded up) until the real count is
    known, and reports each increase to the callback. The callback's exceptions propagate."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._chars = 0
        self._reported = 0

    @property
    def estimate(self) -> int:
        return math.ceil(self._chars / 4)

    def add_text(self, text: str) -> None:
        if not text:
            return
        self._chars += len(text)
        estimate = self.estimate
        if self._callback is not None and estimate > self._reported:
            self._reported = estimate
            self._callback(estimate)

    def final(self, output_tokens: int) -> None:
        if self._callback is not None and output_tokens != self._reported:
            self._reported = output_tokens
            self._callback(output_tokens)


def as_int(value: Any) -> int:
    """A token count from JSON: ints (and integral floats) pass, anything else counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return 0
