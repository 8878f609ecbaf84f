"""Text out of uploaded documents: PDF (pypdf), DOCX (python-docx), HTML (BeautifulSoup, scripts and styles
dropped), and UTF-8 text (.txt, .md, .json, .csv).

Each reader stops once the text is certainly too long for the model (`max_chars`: the intake token estimate
counts at least a quarter token per character), so a huge document costs a bounded amount of memory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from typing import IO

from bs4 import BeautifulSoup

from service.tokens import estimate_text

TEXT_SUFFIXES = (".txt", ".md", ".json", ".csv")
HTML_SUFFIXES = (".html", ".htm")
SUFFIXES = (*TEXT_SUFFIXES, *HTML_SUFFIXES, ".pdf", ".docx")
_DROPPED_TAGS = ("script", "style", "noscript", "template", "svg")
_BLANK_RUNS = re.compile(r"\n[ \t\r\f\v]*(?:\n[ \t\r\f\v]*)+")


class ExtractError(Exception):
    """The file cannot be turned into text; the message says why, for the user."""


class TooLarge(Exception):
    """The text is longer than the model's window; `at_least` is a lower bound of its token estimate."""

    def __init__(self, at_least: int) -> None:
        super().__init__(f"at least {at_least} tokens")
        self.at_least = at_least


def suffix_of(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _clean(text: str) -> str:
    # Postgres cannot store NUL in jsonb; collapse the blank-line runs layout extraction leaves behind.
    return _BLANK_RUNS.sub("\n\n", text.replace("\x00", "")).strip()


def _joined(parts: Iterable[str], max_chars: int, sep: str = "\n\n") -> str:
    """Join parts, giving up with TooLarge as soon as they pass max_chars."""
    out: list[str] = []
    size = 0
    for part in parts:
        out.append(part)
        size += len(part) + len(sep)
        if size > max_chars:
            raise TooLarge(estimate_text(sep.join(out)))
    return sep.join(out)


def _text(stream: IO[bytes], max_chars: int) -> str:
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    # Every character is at least a quarter token, and a UTF-8 character at most four bytes: a file of more than
    # 4 * window bytes does not fit, whatever it holds, and is refused without being read.
    if size > max_chars:
        raise TooLarge(math.ceil(size / 4))
    data = stream.read()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ExtractError(
            f"is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None


def _html(stream: IO[bytes], max_chars: int) -> str:
    soup = BeautifulSoup(stream.read(), "html.parser")
    for tag in soup(_DROPPED_TAGS):
        tag.decompose()
    return _joined([soup.get_text("\n")], max_chars)


def _pdf(stream: IO[bytes], max_chars: int) -> str:
    from pypdf import PdfReader

    reader = PdfReader(stream)
    if reader.is_encrypted and not reader.decrypt(""):
        raise ExtractError("is a password-protected PDF; remove the password first")
    return _joined((page.extract_text() for page in reader.pages), max_chars)


def _docx(stream: IO[bytes], max_chars: int) -> str:
    from docx import Document
    from docx.table import Table

    def blocks() -> Iterable[str]:
        for block in Document(stream).iter_inner_content():
            if isinstance(block, Table):
                yield "\n".join("\t".join(cell.text for cell in row.cells) for row in block.rows)
            else:
                yield block.text

    return _joined(blocks(), max_chars, "\n")


_READERS: dict[str, tuple[str, Callable[[IO[bytes], int], str]]] = {
    **{s: ("text", _text) for s in TEXT_SUFFIXES},
    **{s: ("HTML", _html) for s in HTML_SUFFIXES},
    ".pdf": ("PDF", _pdf),
    ".docx": ("DOCX", _docx),
}


def extract(name: str, stream: IO[bytes], *, max_chars: int) -> str:
    """The document's text, cleaned. Raises ExtractError (unsupported, unreadable or empty) or TooLarge."""
    suffix = suffix_of(name)
    if suffix not in _READERS:
        shown = f"{suffix!r} files are" if suffix else "files without an extension are"
        raise ExtractError(f"{shown} not supported; send {', '.join(SUFFIXES)}")
    kind, reader = _READERS[suffix]
    try:
        text = _clean(reader(stream, max_chars))
    except (ExtractError, TooLarge):
        raise
    except Exception as exc:
        # Parsers of untrusted files fail in many ways (zip, XML, PDF syntax errors): each one is the
        # client's file that cannot be read, never a server error.
        raise ExtractError(f"cannot be read as {kind}: {exc or type(exc).__name__}") from None
    if not text:
        hint = " (a scanned PDF needs OCR first)" if suffix == ".pdf" else ""
        raise ExtractError(f"holds no text{hint}")
    return text
