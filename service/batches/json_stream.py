"""A JSON object body read from a binary stream a window at a time: `{"requests": [item, item, ...], ...}` in
the memory of one item, not of the body (issue 14.2).

Each item is parsed by the standard library's C scanner (`JSONDecoder.raw_decode`), the same parser the JSONL
path runs on each line, so a JSON batch and the same JSONL accept and refuse exactly the same values (NaN,
Infinity, huge integers and lone surrogates then meet the same validation). Only the outer object and the array
around the items are walked here, one structural character at a time.

Why not ijson: with its C backend (yajl2_c, ijson 3.6) an integer of more than 4,300 digits crashes the process
(a segfault, not an exception) unless `use_float=True`, which in turn refuses every integer beyond 64 bits that
`json.loads` accepts; and it turns a lone surrogate escape into `?` instead of keeping it for validation to refuse.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from service import validation
from service.api.errors import APIError

WINDOW = 1 << 20  # characters decoded at a time; a larger item widens the window until it fits
_WS = re.compile(r"[ \t\n\r]*")
# service.validation's decoder: NaN/Infinity and integers past 4,300 digits come out as values its rules name
# (with the field), not as parse errors, so a JSON body refuses them exactly as a JSONL line does.
_DECODER = validation.DECODER
# How close to the end of the window an error must be to mean "the window ends mid-value" rather than "bad JSON".
_NEAR_END = 32


@dataclass(frozen=True, kw_only=True, slots=True)
class Item:
    index: int
    value: Any
    # The item's JSON text holds no NUL escape (see service.batches.service.json_text_nul_free).
    nul_free: bool


class _Text:
    """The stream's text: a window of decoded characters that slides forward as values are consumed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.buf = ""
        self.pos = 0
        self.consumed = 0  # characters before `buf`, for error positions
        self.eof = False
        head = stream.read(4)
        # json.loads(bytes) accepts UTF-8 (with or without BOM), UTF-16 and UTF-32: so does this.
        self.decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("strict")
        self._decode(head, final=not head)

    def _decode(self, data: bytes, *, final: bool) -> None:
        try:
            text = self.decoder.decode(data, final=final)
        except UnicodeDecodeError as exc:
            raise APIError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
        self.buf = self.buf[self.pos :] + text
        self.consumed += self.pos
        self.pos = 0
        self.eof = final

    def more(self, at_least: int = WINDOW) -> bool:
        """Read at least `at_least` more bytes into the window; False at the end of the stream."""
        if self.eof:
            return False
        data = self.stream.read(max(at_least, WINDOW))
        self._decode(data, final=not data)
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end), without consuming it."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]  # always matches
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos : self.pos + 1]

    def take(self, expected: str, what: str) -> None:
        found = self.peek()
        if found != expected:
            seen = repr(found) if found else "the end of the body"
            raise self.error(f"expected {what} at character {self.consumed + self.pos}, found {seen}")
        self.pos += 1

    def value(self) -> tuple[Any, str]:
        """The next JSON value and its text. JSONDecodeError for a value that is not valid JSON."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                truncated = exc.pos >= len(self.buf) - _NEAR_END or exc.msg.startswith("Unterminated string")
                # Widening by the window's own size keeps a large item linear: it is re-scanned log(n) times.
                if truncated and self.more(len(self.buf) - self.pos):
                    continue
                raise
            # A number or literal ending exactly at the window's end may go on in the next bytes.
            if end == len(self.buf) and self.more():
                continue
            text = self.buf[self.pos : end]
            self.pos = end
            return value, text

    @staticmethod
    def error(message: str, field: str | None = None) -> APIError:
        return APIError(400, "invalid_json", f"the body is not valid JSON: {message}", field=field)


def _invalid_value(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return f"nested more than {validation.MAX_DEPTH} levels deep"
    # ValueError: an integer longer than Python converts (sys.get_int_max_str_digits), as json.loads says it.
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def read_object(
    stream: IO[bytes], *, array: str, on_member: Callable[[str, Any], None], keep_items: bool = True
) -> Iterator[Item]:
    """Walk a JSON object body: each member but `array` goes to `on_member(name, value)` as it is read (a name
    given twice is refused); the items of `array` are yielded one at a time (with `keep_items=False` they are
    only checked to be JSON, and not yielded). Raises APIError naming `array[index]` for an item that is not
    valid JSON, and APIError 422 naming `array` when it is missing or not an array."""
    text = _Text(stream)
    seen: set[str] = set()
    text.take("{", "a JSON object")
    if text.peek() == "}":
        text.pos += 1
    else:
        while True:
            if text.peek() != '"':
                text.take('"', "a member name in double quotes")
            try:
                name, _ = text.value()
            except (json.JSONDecodeError, ValueError, RecursionError) as exc:
                raise text.error(_invalid_value(exc)) from None
            if name in seen:
                raise APIError(422, "invalid_request", f"{name}: given twice", field=name)
            seen.add(name)
            text.take(":", "':' after a member name")
            if name == array and text.peek() == "[":
                text.pos += 1
                yield from _items(text, array, keep_items)
            else:
                try:
                    value, _ = text.value()
                except (json.JSONDecodeError, ValueError, RecursionError) as exc:
                    raise text.error(_invalid_value(exc), name) from None
                if name == array:
                    raise APIError(422, "invalid_request", f"{array}: must be a JSON array", field=array)
                validation.check_value(value, field=name)  # the rules every JSON value meets (service.validation)
                on_member(name, value)
            if text.peek() == ",":
                text.pos += 1
                continue
            text.take("}", "',' or '}' in the object")
            break
    if text.peek():
        raise text.error(f"extra data after the object at character {text.consumed + text.pos}")
    if array not in seen:
        raise APIError(422, "invalid_request", f"{array}: Field required", field=array)


def _items(text: _Text, array: str, keep: bool) -> Iterator[Item]:
    if text.peek() == "]":
        text.pos += 1
        return
    index = 0
    while True:
        field = f"{array}[{index}]"
        try:
            value, raw = text.value()
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:
            reason = _invalid_value(exc)
            raise APIError(400, "invalid_json", f"{field} is not valid JSON: {reason}", field=field) from None
        if keep:
            validation.check_value(value, field=field)
            yield Item(index=index, value=value, nul_free="\\u0000" not in raw and "\x00" not in raw)
        index += 1
        if text.peek() == ",":
            text.pos += 1
            continue
        text.take("]", f"',' or ']' after {field}")
        return
