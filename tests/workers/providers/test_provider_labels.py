"""Base64 MOV goes to MiniMax labelled `video/mov`, as its API spec names it, whatever label the job carried
(issue 15.4); everything else in the request is sent untouched."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from workers.providers import get_provider

DATA = "AAAAFGZ0eXBxdCAgAAAAAA=="


def sent_body(fmt: str, params: dict[str, Any]) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if fmt == "anthropic":
            answer = {"type": "message", "content": [{"type": "text", "text": "ok"}], "usage": {}}
        else:
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
        return httpx.Response(200, json=answer)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        get_provider(fmt).call(
            client=client,
            base_url="https://api.minimax.io",
            api_key="k",
            model="MiniMax-M3",
            params=params,
            stream=False,
        )
    return seen[0]


@pytest.mark.parametrize("label", ["video/quicktime", "video/QuickTime", "video/mov"])
def test_anthropic_source_is_labelled_video_mov(label: str) -> None:
    video = {"type": "video", "source": {"type": "base64", "media_type": label, "data": DATA, "fps": 2}}
    text = {"type": "text", "text": "describe"}
    params: dict[str, Any] = {"messages": [{"role": "user", "content": [video, text]}], "max_tokens": 10}
    body = sent_body("anthropic", params)
    [sent_video, sent_text] = body["messages"][0]["content"]
    assert sent_video["source"] == {"type": "base64", "media_type": "video/mov", "data": DATA, "fps": 2}
    assert sent_text == text
    assert params["messages"][0]["content"][0]["source"]["media_type"] == label  # the job's own params untouched


def test_openai_data_url_is_labelled_video_mov() -> None:
    video = {"type": "video_url", "video_url": {"url": f"data:video/quicktime;base64,{DATA}", "detail": "low"}}
    body = sent_body("openai", {"messages": [{"role": "user", "content": [video]}]})
    assert body["messages"][0]["content"][0] == {
        "type": "video_url",
        "video_url": {"url": f"data:video/mov;base64,{DATA}", "detail": "low"},
    }


def test_other_media_pass_unchanged() -> None:
    mp4 = {"type": "video", "source": {"type": "base64", "media_type": "video/mp4", "data": DATA}}
    url = {"type": "video", "source": {"type": "url", "url": "mm_file://123"}}
    params = {"messages": [{"role": "user", "content": [mp4, url]}], "max_tokens": 10}
    assert sent_body("anthropic", params)["messages"] == params["messages"]
