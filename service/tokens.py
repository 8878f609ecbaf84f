"""Input-token estimates made at intake, before anything is spent.

A heuristic, not MiniMax's tokenizer: about four ASCII characters per token, one token per other character
(CJK text runs close to that), fixed figures for media. It errs high on purpose: refusing at intake
costs the user a moment, a 2013 from upstream costs an attempt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

MESSAGE_OVERHEAD = 4
REQUEST_OVERHEAD = 8
# Rough per-item figures from the MiniMax reference (image default detail ~1k-3k tokens).
IMAGE_TOKENS = {"low": 600, "default": 3000, "high": 15000}
VIDEO_TOKENS = 30000

_MEDIA_TYPES = {"image", "video", "image_url", "video_url"}


def estimate_text(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ord(ch) < 128) if not text.isascii() else len(text)
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _media_tokens(part: Mapping[str, Any]) -> int:
    kind = str(part.get("type"))
    inner = part.get("source") or part.get(kind) or {}
    detail = str(inner.get("detail", "default")) if isinstance(inner, Mapping) else "default"
    if kind.startswith("video"):
        return VIDEO_TOKENS
    return IMAGE_TOKENS.get(detail, IMAGE_TOKENS["default"])


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_text(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, Mapping) and part.get("type") in _MEDIA_TYPES:
                total += _media_tokens(part)
            elif isinstance(part, Mapping):
                total += sum(_content_tokens(v) for k, v in part.items() if k not in ("type", "signature"))
            else:
                total += _content_tokens(part)
        return total
    if isinstance(content, Mapping):
        return sum(_content_tokens(v) for v in content.values())
    if content is None or isinstance(content, bool):
        return 0
    return estimate_text(str(content))


def estimate_input_tokens(params: Mapping[str, Any]) -> int:
    """Estimate the input tokens of a Messages or Chat Completions body."""
    total = REQUEST_OVERHEAD
    system = params.get("system")
    if system is not None:
        total += MESSAGE_OVERHEAD + _content_tokens(system)
    messages = params.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += MESSAGE_OVERHEAD
            if isinstance(message, Mapping):
                total += _content_tokens(message.get("content"))
                if "tool_calls" in message:
                    total += estimate_text(json.dumps(message["tool_calls"]))
    tools = params.get("tools")
    if tools:
        total += estimate_text(json.dumps(tools))
    return total
