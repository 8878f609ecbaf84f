"""A multipart upload streamed straight into the file store: the `file` field's bytes go to a store writer as they
arrive (in a worker thread, a megabyte at a time), never to a temporary file first and never whole in memory.
The size limit is enforced while the bytes pass, so an oversized upload is refused without being kept."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.api.errors import APIError
from service.files.storage import Storage, Writer

FLUSH_BYTES = 1024 * 1024
FIELD_MAX_BYTES = 1024


@dataclass
class Received:
    """The parsed form: the small text fields, and the file field's committed writer and filename."""

    fields: dict[str, str] = field(default_factory=dict)
    writer: Writer | None = None
    filename: str = ""


class _Parser:
    def __init__(self, store: Storage, file_id: str, max_bytes: int) -> None:
        self.store = store
        self.file_id = file_id
        self.max_bytes = max_bytes
        self.received = Received()
        self.pending = bytearray()
        self.file_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._value = bytearray()
        self._in_file = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._append("_header_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_header_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _append(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}
        self._value = bytearray()
        self._in_file = False

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name != "file":
            return
        if self.received.writer is not None:
            raise APIError(422, "invalid_request", "file: send one file per upload", field="file")
        self._in_file = True
        self.received.filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self.received.writer = self.store.writer(self.file_id)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                raise APIError(413, "request_too_large", f"file: larger than {self.max_bytes:,} bytes", field="file")
            self.pending += data[start:end]
        elif len(self._value) + end - start > FIELD_MAX_BYTES:
            raise APIError(
                422, "invalid_request", f"{self._name}: longer than {FIELD_MAX_BYTES} bytes", field=self._name
            )
        else:
            self._value += data[start:end]

    def _part_end(self) -> None:
        if not self._in_file:
            self.received.fields[self._name] = self._value.decode("utf-8", "replace")


async def receive(
    chunks: AsyncIterator[bytes], content_type: str, *, store: Storage, file_id: str, max_bytes: int
) -> Received:
    """Parse the body and store its `file` field under `file_id` (committed); raises APIError naming the field."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise APIError(415, "invalid_request", "the body must be multipart/form-data with the fields file and purpose")
    state = _Parser(store, file_id, max_bytes)
    parser = MultipartParser(boundary, state.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
            if len(state.pending) >= FLUSH_BYTES:
                await _flush(state)
        parser.finalize()
        await _flush(state)
        if state.received.writer is None:
            raise APIError(422, "invalid_request", "file: the form has no file field", field="file")
        await anyio.to_thread.run_sync(state.received.writer.commit)
    except MultipartParseError as exc:
        await _abort(state)
        raise APIError(400, "invalid_request", f"the multipart body is malformed: {exc}") from None
    except BaseException:
        with anyio.CancelScope(shield=True):  # a client that hung up must not leave a half-written upload
            await _abort(state)
        raise
    return state.received


async def _flush(state: _Parser) -> None:
    writer = state.received.writer
    if writer is None or not state.pending:
        return
    data = bytes(state.pending)
    state.pending.clear()
    await anyio.to_thread.run_sync(writer.write, data)


async def _abort(state: _Parser) -> None:
    if state.received.writer is not None:
        await anyio.to_thread.run_sync(state.received.writer.abort)
