"""The SSE parser on input split and shaped the way real connections deliver it."""

from __future__ import annotations

import pytest

from workers.providers.sse import ServerSentEvent, SSEDecoder, iter_sse

STREAM = (
    b": keep-alive comment\n"
    b"event: message_start\n"
    b'data: {"type": "message_start"}\n'
    b"\n"
    b"event: content_block_delta\n"
    b"data: first line\n"
    b"data:second line\n"
    b"data:  two leading spaces\n"
    b": a comment between data lines\n"
    b"data\n"
    b"\n"
    b"data: [DONE]\n"
    b"\n"
)
EXPECTED = [
    ServerSentEvent(event="message_start", data='{"type": "message_start"}'),
    ServerSentEvent(event="content_block_delta", data="first line\nsecond line\n two leading spaces\n"),
    ServerSentEvent(event="message", data="[DONE]"),
]


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_events_multiline_data_and_comments() -> None:
    assert list(iter_sse([STREAM])) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64])
def test_chunk_boundaries_anywhere_give_the_same_events(size: int) -> None:
    assert list(iter_sse(split_every(STREAM, size))) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 1000])
def test_crlf_and_lone_cr_line_endings(size: int) -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    cr = STREAM.replace(b"\n", b"\r")
    assert list(iter_sse(split_every(crlf, size))) == EXPECTED
    assert list(iter_sse(split_every(cr, size))) == EXPECTED


def test_crlf_split_between_cr_and_lf_is_one_line_ending() -> None:
    # "data: a\r" | "\n\r\n": if the LF after the chunk boundary counted as its own (blank) line, the event
    # would be dispatched early and the blank line after it would be a second, empty dispatch.
    events = list(iter_sse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]))
    assert events == [ServerSentEvent(event="message", data="a\nb")]


def test_multibyte_utf8_split_across_chunks() -> None:
    payload = "data: caf\u00e9 \u2603 \U0001f600\n\n".encode()
    assert list(iter_sse(split_every(payload, 1))) == [
        ServerSentEvent(event="message", data="caf\u00e9 \u2603 \U0001f600")
    ]


def test_event_name_resets_after_dispatch_and_empty_event_is_not_dispatched() -> None:
    events = list(iter_sse([b"event: ping\n\nevent: error\ndata: x\n\ndata: y\n\n"]))
    # "event: ping" with no data dispatches nothing, and its name must not leak into the next event.
    assert events == [ServerSentEvent(event="error", data="x"), ServerSentEvent(event="message", data="y")]


def test_id_and_retry_fields_and_bom() -> None:
    events = list(iter_sse([b"\xef\xbb\xbfid: 7\nretry: 1500\nretry: soon\ndata: z\n\n"]))
    assert events == [ServerSentEvent(event="message", data="z", id="7", retry=1500)]


def test_end_of_stream_keeps_complete_lines_and_drops_a_cut_line() -> None:
    # A final event whose blank line never came is still whole; a line cut by the disconnect is not.
    assert list(iter_sse([b"data: whole\n"])) == [ServerSentEvent(event="message", data="whole")]
    assert list(iter_sse([b'data: {"type": "mess'])) == []
    assert list(iter_sse([b'data: a\n\ndata: {"cut'])) == [ServerSentEvent(event="message", data="a")]


def test_decoder_returns_events_only_when_their_blank_line_arrives() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("data: he") == []
    assert decoder.feed("llo\n") == []
    assert decoder.feed("\n") == [ServerSentEvent(event="message", data="hello")]
    assert decoder.close() == []
