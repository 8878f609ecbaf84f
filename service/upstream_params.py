"""MiniMax-specific request parameters checked at intake: what `tool_choice` MiniMax takes, and `reasoning_split`.

Sources: ../shared/reference/minimax-api.md ("`tool_choice` supports auto/none"; "`reasoning_content` /
`reasoning_details` with `reasoning_split: true`") and MiniMax's OpenAI-compatible page (stored in
../shared/seeds/001_d4d0ec7076c0aa43.txt: "reasoning_split ... Output-format switch. When enabled, separates thinking
content into reasoning_content and reasoning_details"). A value MiniMax does not take is refused here, naming the
field, rather than failing the job upstream with a 2013 after it waited in the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.api.errors import APIError

SUPPORTED_TOOL_CHOICES = ("auto", "none")


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", field=field)


def check_tool_choice(params: Mapping[str, Any], fmt: str) -> None:
    """`auto` or `none` only: `{"type": "auto"|"none"}` on the Anthropic format, `"auto"`/`"none"` on the OpenAI one."""
    if "tool_choice" not in params or params["tool_choice"] is None:
        return
    choice = params["tool_choice"]
    kind = choice.get("type") if fmt == "anthropic" and isinstance(choice, Mapping) else choice
    if isinstance(kind, str) and kind in SUPPORTED_TOOL_CHOICES:
        return
    example = '{"type": "auto"}' if fmt == "anthropic" else '"auto"'
    shown = kind if isinstance(kind, str) else choice
    raise _invalid(
        "params.tool_choice",
        f"MiniMax supports only auto and none, not {shown!r}: leave tool_choice out or set it to {example}"
        + (" (forcing a tool is not available)" if shown in ("any", "tool", "required", "function") else ""),
    )


def check_reasoning_split(params: Mapping[str, Any], fmt: str) -> None:
    if "reasoning_split" not in params:
        return
    if fmt != "openai":
        raise _invalid(
            "params.reasoning_split",
            "only on the openai format; the anthropic format already returns thinking as separate blocks",
        )
    if not isinstance(params["reasoning_split"], bool):
        raise _invalid("params.reasoning_split", "must be true or false")


def with_reasoning_split(params: dict[str, Any], fmt: str, default: bool | None) -> dict[str, Any]:
    """A batch's `reasoning_split` default applied to one of its OpenAI-format requests that did not set its own."""
    if default is None or fmt != "openai" or "reasoning_split" in params:
        return params
    return {**params, "reasoning_split": default}
