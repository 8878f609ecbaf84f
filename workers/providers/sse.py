"""A small incremental Server-Sent Events parser (WHATWG "event stream interpretation").

Bytes arrive in arbitrary chunks: a chunk may end inside a UTF-8 sequence, inside a line, or between the CR
and the LF of a CRLF. The decoder keeps that state between `feed` calls and yields each event once its blank
line arrives.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed text, get complete events. Call `close()` at end of stream for an event left unterminated."""

    def __init__(self) -> None:
        self._partial: list[str] = []  # pieces of an incomplete line (they hold no CR or LF)
        self._skip_lf = False  # the previous chunk ended with CR: a leading LF belongs to that line ending
        self._at_start = True
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._skip_lf:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[ServerSentEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            line = text[start : match.start()]
            if self._partial:
                line = "".join(self._partial) + line
                self._partial = []
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = match.end()
            if match.group() == "\r" and start == len(text):
                self._skip_lf = True
        if start < len(text):
            self._partial.append(text[start:])
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream. An unterminated last line is dropped: the connection was cut inside it. The spec
        also drops complete `data:` lines still waiting for their blank line; we dispatch those, since a
        server that closes right after its last line has sent that data whole."""
        self._partial = []
        event = self._dispatch()
        return [event] if event is not None else []

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment (keep-alive)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            event=self._event or "message", data="\n".join(self._data), id=self._last_id, retry=self._retry
        )
        self._event = ""
        self._data = []
        return event


def iter_sse(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Events from a byte stream, decoded as UTF-8 incrementally (invalid bytes become U+FFFD)."""
    decoder = SSEDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in chunks:
        yield from decoder.feed(utf8.decode(chunk))
    yield from decoder.feed(utf8.decode(b"", final=True))
    yield from decoder.close()
