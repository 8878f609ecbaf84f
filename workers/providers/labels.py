"""Media labels as MiniMax reads them. MiniMax's API spec labels base64 MOV `video/mov`, in an Anthropic source's
`media_type` and in an OpenAI data URL alike (reference/minimax-api.md, "Multimodal"), not the IANA `video/quicktime`
that files and browsers use. Intake accepts both; the adapters send MiniMax's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUICKTIME, MINIMAX_MOV = "video/quicktime", "video/mov"
_DATA_QT = "data:" + QUICKTIME


def _part(part: Any) -> Any:
    if not isinstance(part, Mapping):
        return part
    kind = part.get("type")
    if kind == "video":
        source = part.get("source")
        if isinstance(source, Mapping) and str(source.get("media_type", "")).split(";")[0].strip().lower() == QUICKTIME:
            return {**part, "source": {**source, "media_type": MINIMAX_MOV}}
    elif kind == "video_url":
        holder = part.get("video_url")
        url = holder.get("url") if isinstance(holder, Mapping) else None
        if isinstance(holder, Mapping) and isinstance(url, str) and url[: len(_DATA_QT)].lower() == _DATA_QT:
            return {**part, "video_url": {**holder, "url": "data:" + MINIMAX_MOV + url[len(_DATA_QT) :]}}
    elif kind == "tool_result":
        content = part.get("content")
        if isinstance(content, list):
            new = _parts(content)
            return part if new is content else {**part, "content": new}
    return part


def _parts(items: list[Any]) -> list[Any]:
    out = [_part(item) for item in items]
    return items if all(a is b for a, b in zip(out, items, strict=True)) else out


def minimax_media_labels(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """`params` with every base64 MOV labelled `video/mov`; the same object when nothing needed it."""
    messages = params.get("messages")
    if not isinstance(messages, list):
        return params
    changed = False
    new_messages = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            new = _parts(content)
            if new is not content:
                changed = True
                message = {**message, "content": new}
        new_messages.append(message)
    return {**params, "messages": new_messages} if changed else params
