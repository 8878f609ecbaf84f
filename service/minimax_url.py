"""MINIMAX_BASE_URL as people set it, reduced to the one root both wire formats hang their paths from.

MiniMax documents two base URLs, `https://api.minimax.io/anthropic` (Anthropic SDK) and `https://api.minimax.io/v1`
(OpenAI SDK); mainland-China accounts use `api.minimaxi.com` (reference/minimax-api.md, "Base URLs as people set
them"). Tools copy either one, with or without a trailing slash, sometimes with the whole endpoint path. The adapters
append `/anthropic/v1/messages` and `/v1/chat/completions` to a root, so a base that kept its `/v1` would call
`/v1/anthropic/v1/messages` and get 404 on every job. A path in front of the suffix (a proxy's prefix) is kept.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# Longest first: the first suffix that ends the path is cut, once.
_SUFFIXES = (
    "/anthropic/v1/messages/count_tokens",
    "/anthropic/v1/messages",
    "/v1/chat/completions",
    "/anthropic/v1",
    "/anthropic",
    "/v1",
)


def normalize_base_url(url: str) -> str:
    """The root URL (scheme, host, any proxy prefix; no trailing slash) for a base URL in any documented form.

    `https://api.minimax.io/v1/` -> `https://api.minimax.io`; `api.minimaxi.com/anthropic` ->
    `https://api.minimaxi.com`; `https://proxy.example/minimax/v1` -> `https://proxy.example/minimax`."""
    text = url.strip()
    if not text:
        raise ValueError("MINIMAX_BASE_URL is empty; use https://api.minimax.io (or https://api.minimaxi.com in China)")
    if "://" not in text:
        text = "https://" + text  # `api.minimax.io/v1`, as some tools write it
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"MINIMAX_BASE_URL {url!r} is not an http(s) URL; use https://api.minimax.io")
    path = parts.path.rstrip("/")
    lowered = path.lower()
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            path = path[: len(path) - len(suffix)].rstrip("/")
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
