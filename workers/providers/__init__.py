"""Provider adapters: one per upstream wire format, one normalized `Completion` / `UpstreamError` out."""

from __future__ import annotations

from workers.providers.anthropic import AnthropicProvider
from workers.providers.base import Classification, Completion, Provider, UpstreamError, Usage, classify
from workers.providers.openai import OpenAIProvider

_PROVIDERS: dict[str, Provider] = {"anthropic": AnthropicProvider(), "openai": OpenAIProvider()}
FORMATS = tuple(_PROVIDERS)


def get_provider(fmt: str) -> Provider:
    """The adapter for a job's upstream format: "anthropic" (the default) or "openai"."""
    try:
        return _PROVIDERS[fmt]
    except KeyError:
        raise ValueError(f"unknown upstream format {fmt!r}; expected one of {', '.join(FORMATS)}") from None


__all__ = [
    "FORMATS",
    "AnthropicProvider",
    "Classification",
    "Completion",
    "OpenAIProvider",
    "Provider",
    "UpstreamError",
    "Usage",
    "classify",
    "get_provider",
]
