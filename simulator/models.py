"""The models the simulator serves, with the limits MiniMax documents for them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    context_window: int
    max_output_tokens: int
    multimodal: bool
    # M2.x always think; only M3 lets the caller switch thinking off.
    thinking_optional: bool
    thinking_default_anthropic: bool
    thinking_default_openai: bool
    # M2-her is a dialogue model: it never thinks, and MiniMax serves it on the OpenAI-compatible endpoint only.
    thinks: bool = True
    endpoints: frozenset[str] = frozenset({"anthropic", "openai"})

    def thinking(self, *, endpoint_default: bool, requested: str | None) -> bool:
        """Whether this call thinks, given the ``thinking.type`` the caller sent (if any)."""
        if not self.thinks:
            return False
        if not self.thinking_optional:
            return True
        if requested is None:
            return endpoint_default
        return requested != "disabled"


_M2_NAMES = (
    "MiniMax-M2.7",
    "MiniMax-M2.7-highspeed",
    "MiniMax-M2.5",
    "MiniMax-M2.5-highspeed",
    "MiniMax-M2.1",
    "MiniMax-M2.1-highspeed",
    "MiniMax-M2",
)

MODELS: dict[str, ModelSpec] = {
    "MiniMax-M3": ModelSpec(
        name="MiniMax-M3",
        context_window=1_000_000,
        max_output_tokens=524_288,
        multimodal=True,
        thinking_optional=True,
        thinking_default_anthropic=False,
        thinking_default_openai=True,
    ),
    **{
        name: ModelSpec(
            name=name,
            context_window=204_800,
            # The vendor page gives 204,800 as the max_tokens ceiling; input + max_tokens must still fit.
            max_output_tokens=204_800,
            multimodal=False,
            thinking_optional=False,
            thinking_default_anthropic=True,
            thinking_default_openai=True,
        )
        for name in _M2_NAMES
    },
    # The role-play model (models overview: "M2-her | 64 K"; text-chat page: max_tokens at most 2048).
    "M2-her": ModelSpec(
        name="M2-her",
        context_window=64_000,
        max_output_tokens=2048,
        multimodal=False,
        thinking_optional=False,
        thinking_default_anthropic=False,
        thinking_default_openai=False,
        thinks=False,
        endpoints=frozenset({"openai"}),
    ),
}

DEFAULT_MAX_TOKENS = 8192
