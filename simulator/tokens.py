"""Token counting and the deterministic answer.

Counting rule (one function serves ``count_tokens`` and billing, on both endpoints):

- a text piece costs ``ceil(len(text) / 4)`` tokens (0 for empty text);
- every request costs 3 tokens, every message 4 more, a system prompt 4 more plus its text;
- image blocks cost 300 / 1500 / 6000 tokens for ``detail`` low / default (or auto, or absent) / high;
- a video costs ``frames x (50 / 200 / 800)`` tokens for ``detail`` low / default / high, with
  ``frames = max(1, ceil(seconds x fps))`` (``fps`` default 1). Its length in seconds is derived from its size at
  1,000,000 bytes per second, rounded up (at least 1): the decoded size of base64 data, the uploaded size of an
  ``mm_file://ID``; a URL video says its length with ``sim_seconds=N`` in its query or fragment, else 20 s
  (so a URL video at the defaults costs 4000 tokens);
- tool definitions, tool calls and any block the counter does not know cost the tokens of their compact JSON
  (``sort_keys``, no spaces); thinking blocks sent back cost their thinking text (the signature is free).

Answer rule: with a target of ``T`` output tokens, a thinking call first thinks ``max(1, T // 4)`` tokens; the
text is ``SIM:<first 12 hex of sha256(last user text)> You said: <first 60 chars of it>`` padded with filler
words to the remaining tokens (never cut shorter than that head). Generation stops at ``max_tokens``.
Output tokens are the tokens, by the rule above, of the thinking text plus the answer text.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4
REQUEST_OVERHEAD = 3
MESSAGE_OVERHEAD = 4
SYSTEM_OVERHEAD = 4
IMAGE_TOKENS = {"low": 300, "default": 1500, "auto": 1500, "high": 6000}
VIDEO_FRAME_TOKENS = {"low": 50, "default": 200, "auto": 200, "high": 800}
VIDEO_BYTES_PER_SECOND = 1_000_000
VIDEO_DEFAULT_SECONDS = 20
VIDEO_TOKENS = VIDEO_DEFAULT_SECONDS * VIDEO_FRAME_TOKENS["default"]  # a URL video without a length hint
_SIM_SECONDS = re.compile(r"[?&#]sim_seconds=([0-9]{1,6})")

# The uploaded size of a Files API id (``mm_file://ID``), or None if there is no such file.
FileBytes = Callable[[str], int | None]

_FILLER = (
    "quiet", "river", "stone", "maple", "cloud", "amber", "lantern", "meadow", "copper", "harbor",
    "signal", "orbit", "pebble", "cedar", "violet", "summit", "willow", "ember", "tide", "falcon",
)  # fmt: skip


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def json_tokens(value: object) -> int:
    return text_tokens(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def _holder(part: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where a media part keeps its url or data and its options, in either endpoint's shape."""
    for holder in (part.get("source"), part.get("image_url"), part.get("video_url")):
        if isinstance(holder, Mapping):
            return holder
    return part


def _detail(part: Mapping[str, Any]) -> str:
    detail = _holder(part).get("detail")
    return detail if isinstance(detail, str) else "default"


def video_seconds(part: Mapping[str, Any], files: FileBytes | None = None) -> int:
    """A video's length by the counting rule: from its bytes, or a URL's ``sim_seconds``, else 20 s."""
    holder = _holder(part)
    data, url = holder.get("data"), holder.get("url")
    size: int | None = None
    if isinstance(data, str):
        size = _decoded_size(len(data), data)
    elif isinstance(url, str) and url.startswith("data:"):
        size = _decoded_size(len(url) - url.find(",") - 1, url)
    elif isinstance(url, str) and url.startswith("mm_file://"):
        size = files(url.removeprefix("mm_file://")) if files is not None else None
    elif isinstance(url, str) and (hint := _SIM_SECONDS.search(url)):
        return max(1, int(hint.group(1)))
    if size is None:
        return VIDEO_DEFAULT_SECONDS
    return max(1, math.ceil(size / VIDEO_BYTES_PER_SECOND))


def _decoded_size(length: int, text: str) -> int:
    return length * 3 // 4 - text.endswith("=") - text.endswith("==")


def video_tokens(part: Mapping[str, Any], files: FileBytes | None = None) -> int:
    fps = _holder(part).get("fps")
    rate = float(fps) if isinstance(fps, int | float) and not isinstance(fps, bool) and fps > 0 else 1.0
    frames = max(1, math.ceil(video_seconds(part, files) * rate))
    return frames * VIDEO_FRAME_TOKENS.get(_detail(part), VIDEO_FRAME_TOKENS["default"])


def part_tokens(part: object, files: FileBytes | None = None) -> int:
    """Tokens of one content part, in either endpoint's block shape."""
    if isinstance(part, str):
        return text_tokens(part)
    if not isinstance(part, Mapping):
        return json_tokens(part)
    kind = part.get("type")
    if kind == "text":
        return text_tokens(str(part.get("text", "")))
    if kind in ("image", "image_url"):
        return IMAGE_TOKENS.get(_detail(part), IMAGE_TOKENS["default"])
    if kind in ("video", "video_url"):
        return video_tokens(part, files)
    if kind == "thinking":
        return text_tokens(str(part.get("thinking", "")))
    if kind == "redacted_thinking":
        return text_tokens(str(part.get("data", "")))
    if kind == "tool_use":
        return text_tokens(str(part.get("name", ""))) + json_tokens(part.get("input", {}))
    if kind == "tool_result":
        return content_tokens(part.get("content", ""), files)
    return json_tokens(part)


def content_tokens(content: object, files: FileBytes | None = None) -> int:
    if isinstance(content, list):
        return sum(part_tokens(part, files) for part in content)
    if content is None:
        return 0
    return part_tokens(content, files)


def _message_tokens(message: Mapping[str, Any], files: FileBytes | None) -> int:
    tokens = MESSAGE_OVERHEAD + content_tokens(message.get("content"), files)
    # OpenAI-shaped assistant turns carry tool calls and split-out reasoning beside the content.
    if message.get("tool_calls"):
        tokens += json_tokens(message["tool_calls"])
    if isinstance(message.get("reasoning_content"), str):
        tokens += text_tokens(message["reasoning_content"])
    for detail in message.get("reasoning_details") or ():
        if isinstance(detail, Mapping):
            tokens += text_tokens(str(detail.get("text", "")))
    return tokens


def input_tokens(
    *, system: object, messages: Iterable[Mapping[str, Any]], tools: object, files: FileBytes | None = None
) -> int:
    """Billed input tokens of a request (see the module docstring for the rule); `files` sizes mm_file ids."""
    tokens = REQUEST_OVERHEAD
    if system:
        tokens += SYSTEM_OVERHEAD + content_tokens(system)
    tokens += sum(_message_tokens(message, files) for message in messages)
    if tools:
        tokens += json_tokens(tools)
    return tokens


def media_kinds(messages: Iterable[Mapping[str, Any]]) -> set[str]:
    """``{"image", "video"}`` or a subset: the media the messages carry."""
    found: set[str] = set()
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in ("image", "image_url"):
                found.add("image")
            elif kind in ("video", "video_url"):
                found.add("video")
    return found


def last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text of the last user message: what directives and the answer are derived from."""
    text = ""
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "\n".join(
                str(part.get("text", ""))
                for part in content
                if isinstance(part, Mapping) and part.get("type") == "text"
            )
        else:
            text = ""
    return text


def fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, kw_only=True)
class Generation:
    """What the simulated model produced. ``thinking`` is None when the call did not think."""

    thinking: str | None
    text: str
    truncated: bool
    # A call to one of the request's tools instead of a text answer: (id, name, arguments as JSON text).
    tool: tuple[str, str, str] | None = None

    @property
    def output_tokens(self) -> int:
        arguments = self.tool[2] if self.tool is not None else ""
        return text_tokens(self.thinking or "") + text_tokens(self.text) + text_tokens(arguments)

    @property
    def signature(self) -> str:
        return hashlib.sha256((self.thinking or "").encode("utf-8")).hexdigest()


def _fill(head: str, tokens: int, *, cut_head: bool) -> str:
    size = tokens * CHARS_PER_TOKEN
    words = [head]
    length = len(head)
    index = 0
    while length < size:
        word = _FILLER[index % len(_FILLER)]
        words.append(word)
        length += 1 + len(word)
        index += 1
    text = " ".join(words)
    limit = size if cut_head else max(size, len(head))
    # Cutting at a multiple of 4 characters keeps the token count exact; rstrip drops at most one space.
    return text[:limit].rstrip()


def generate(user_text: str, *, target_tokens: int, max_tokens: int, thinking: bool) -> Generation:
    """The deterministic answer to ``user_text`` (see the module docstring)."""
    digest = fingerprint(user_text)
    think_tokens = max(1, target_tokens // 4) if thinking else 0
    thought: str | None = None
    if thinking:
        thought = _fill(
            f"Simulated reasoning {digest}: the user wrote {len(user_text)} characters; "
            "answer with the SIM marker and echo them.",
            think_tokens,
            cut_head=True,
        )
    head = f"SIM:{digest} You said: {user_text[:60]}"
    text = _fill(head, max(target_tokens - think_tokens, 1), cut_head=False)

    used_by_thinking = text_tokens(thought or "")
    if used_by_thinking + text_tokens(text) <= max_tokens:
        return Generation(thinking=thought, text=text, truncated=False)
    keep_thinking = min(used_by_thinking, max_tokens)
    if thought is not None:
        thought = thought[: keep_thinking * CHARS_PER_TOKEN]
    text = text[: (max_tokens - keep_thinking) * CHARS_PER_TOKEN]
    return Generation(thinking=thought, text=text, truncated=True)


def pieces(text: str, *, max_pieces: int = 200) -> list[str]:
    """Split ``text`` into stream deltas of whole 4-character tokens, so tokens sent can be summed exactly."""
    if not text:
        return []
    tokens = text_tokens(text)
    per_piece = max(4, math.ceil(tokens / max_pieces))
    size = per_piece * CHARS_PER_TOKEN
    return [text[start : start + size] for start in range(0, len(text), size)]
