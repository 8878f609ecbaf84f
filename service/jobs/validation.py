"""Checks a request must pass before it is stored: the model exists, the params are sane, it fits the window.

Every failure names the field at fault, as the user wrote it (`params.temperature`). Batches reuse this
per line, so nothing here touches the database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.api.errors import APIError
from service.catalog import MODELS, ModelInfo, get_model
from service.media.validation import check_media
from service.tokens import estimate_input_tokens
from service.upstream_params import check_reasoning_split, check_tool_choice
from service.validation import check_value

FORMATS = ("anthropic", "openai")
# Roles only some models take (M2-her's dialogue roles), from the catalog.
DIALOGUE_ROLES: frozenset[str] = frozenset().union(*(m.extra_roles for m in MODELS.values()))
_ANTHROPIC_MEDIA = {"image", "video"}
_OPENAI_MEDIA = {"image_url", "video_url"}


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckedRequest:
    model: ModelInfo
    estimated_input_tokens: int
    max_tokens: int | None


def _invalid(field: str, message: str) -> APIError:
    return APIError(422, "invalid_request", f"{field}: {message}", field=field)


def _number(params: Mapping[str, Any], name: str, low: float, high: float | None) -> None:
    if name not in params or params[name] is None:
        return
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"params.{name}", "must be a number")
    if value < low or (high is not None and value > high):
        bounds = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise _invalid(f"params.{name}", f"{value} is outside {bounds}")


def _max_tokens(params: Mapping[str, Any], fmt: str) -> int | None:
    names = ("max_tokens",) if fmt == "anthropic" else ("max_completion_tokens", "max_tokens")
    for name in names:
        value = params.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(f"params.{name}", "must be an integer")
        if value < 1:
            raise _invalid(f"params.{name}", "must be at least 1")
        return value
    return None


def _find_media(params: Mapping[str, Any], fmt: str) -> str | None:
    """The path of the first image or video part, if any."""
    kinds = _ANTHROPIC_MEDIA if fmt == "anthropic" else _OPENAI_MEDIA
    for i, message in enumerate(params.get("messages") or []):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") in kinds:
                    return f"params.messages[{i}].content[{j}]"
    return None


def check_request(*, model: str, fmt: str, params: Mapping[str, Any], nul_free: bool = False) -> CheckedRequest:
    """`nul_free`: the caller saw the request's JSON text and it holds no `\\u0000` (the only way JSON can carry
    a NUL), so strings need not be searched for one."""
    info = get_model(model)
    if info is None:
        known = ", ".join(MODELS)
        raise APIError(422, "invalid_request", f"model: unknown model {model!r}; known models: {known}", field="model")
    if fmt not in FORMATS:
        raise _invalid("format", f"must be one of {', '.join(FORMATS)}")
    # NaN, huge integers, lone surrogates, deep nesting (400) and NUL (422: Postgres text cannot hold it), naming
    # the field, whichever path parsed the params. Walked, not serialized: a 50 MB payload is not copied for this.
    check_value(params, field="params", nul=not nul_free)
    for reserved in ("model", "stream"):
        if reserved in params:
            raise _invalid(
                f"params.{reserved}",
                "set by the service; give the model at the top level and leave stream out",
            )
    if fmt not in info.formats:
        served = " and ".join(sorted(info.formats))
        raise _invalid("format", f"{info.name} is served on the {served} format only; set format to {served}")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("params.messages", "a non-empty list of messages is required")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise _invalid(f"params.messages[{i}]", "each message needs a role and content")
        role = message["role"]
        if isinstance(role, str) and role in DIALOGUE_ROLES and role not in info.extra_roles:
            takers = ", ".join(sorted(m.name for m in MODELS.values() if role in m.extra_roles))
            raise _invalid(f"params.messages[{i}].role", f"{role!r} is a role of {takers} only")
    check_tool_choice(params, fmt)
    check_reasoning_split(params, fmt)
    _number(params, "temperature", 0, 2)
    _number(params, "top_p", 0, 1)
    max_tokens = _max_tokens(params, fmt)
    if max_tokens is not None and max_tokens > info.max_output_tokens:
        field = "params.max_tokens" if "max_tokens" in params else "params.max_completion_tokens"
        raise _invalid(field, f"{max_tokens} is over {info.name}'s output limit of {info.max_output_tokens}")
    media = _find_media(params, fmt)
    if media is not None and "image" not in info.modalities:
        raise _invalid(media, f"{info.name} accepts text only; images and video need MiniMax-M3")
    check_media(params, fmt)  # formats by content, sizes, detail / fps / max_long_side_pixel, URLs (issue 6)
    estimate = estimate_input_tokens(params)
    if estimate + (max_tokens or 0) > info.context_window:
        raise APIError(
            422,
            "context_window_exceeded",
            f"params.messages: estimated {estimate:,} input tokens"
            + (f" + max_tokens {max_tokens:,}" if max_tokens else "")
            + f" exceed {info.name}'s context window of {info.context_window:,} tokens",
            field="params.messages",
        )
    return CheckedRequest(model=info, estimated_input_tokens=estimate, max_tokens=max_tokens)
