"""The simulator's Files API and its media token counting (by detail, fps and a video's length), which make
usage and cost of image and video jobs testable end to end."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from service.config import SIMULATOR_API_KEY
from simulator.tokens import IMAGE_TOKENS, VIDEO_TOKENS
from tests.media.samples import sample

AUTH = {"Authorization": f"Bearer {SIMULATOR_API_KEY}"}
BASE = 3 + 4 + 2  # request + message + the text "what?" (5 characters: 2 tokens)


def count(url: str, part: dict[str, Any]) -> int:
    body = {"model": "MiniMax-M3", "messages": [{"role": "user", "content": [part, {"type": "text", "text": "what?"}]}]}
    r = httpx.post(url + "/anthropic/v1/messages/count_tokens", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return int(r.json()["input_tokens"]) - BASE


def upload(url: str, data: bytes, purpose: str = "video_understanding") -> httpx.Response:
    return httpx.post(
        url + "/v1/files/upload", files={"file": ("v.mp4", data)}, data={"purpose": purpose}, headers=AUTH
    )


@pytest.mark.parametrize(("detail", "tokens"), [(None, 1500), ("low", 300), ("default", 1500), ("high", 6000)])
def test_images_cost_by_detail(simulator_url: str, detail: str | None, tokens: int) -> None:
    source: dict[str, Any] = {"type": "url", "url": "https://e.com/a.png"}
    if detail:
        source["detail"] = detail
    assert count(simulator_url, {"type": "image", "source": source}) == tokens == IMAGE_TOKENS[detail or "default"]


@pytest.mark.parametrize(
    ("size", "fps", "detail", "tokens"),
    [
        (3_000_000, None, None, 3 * 200),  # 3 s, 1 fps, 200 per frame
        (3_000_000, 2, None, 6 * 200),
        (3_000_000, 2, "high", 6 * 800),
        (3_000_000, 0.2, "low", 1 * 50),  # at least one frame
        (2_500_001, 5, "default", 15 * 200),  # 3 s (rounded up) x 5 fps
    ],
)
def test_base64_videos_cost_by_length_fps_and_detail(
    simulator_url: str, size: int, fps: float | None, detail: str | None, tokens: int
) -> None:
    data = base64.b64encode(sample("video/mp4", size)).decode()
    source: dict[str, Any] = {"type": "base64", "media_type": "video/mp4", "data": data}
    source |= {k: v for k, v in (("fps", fps), ("detail", detail)) if v is not None}
    assert count(simulator_url, {"type": "video", "source": source}) == tokens


def test_url_videos_say_their_length(simulator_url: str) -> None:
    plain = {"type": "video", "source": {"type": "url", "url": "https://e.com/v.mp4"}}
    assert count(simulator_url, plain) == VIDEO_TOKENS == 20 * 200
    hinted = {"type": "video", "source": {"type": "url", "url": "https://e.com/v.mp4#sim_seconds=90", "fps": 0.5}}
    assert count(simulator_url, hinted) == 45 * 200


def test_files_api_round_trip_and_mm_file_counting(simulator_url: str) -> None:
    data = sample("video/quicktime", 5_000_000)
    r = upload(simulator_url, data)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["base_resp"] == {"status_code": 0, "status_msg": "success"}
    file = answer["file"]
    assert isinstance(file["file_id"], int)
    assert file["file_id"] > 2**40  # int64-sized, as MiniMax's are
    assert (file["bytes"], file["purpose"], file["filename"]) == (len(data), "video_understanding", "v.mp4")
    file_id = file["file_id"]
    got = httpx.get(simulator_url + "/v1/files/retrieve", params={"file_id": file_id}, headers=AUTH).json()
    assert got["file"] == file
    listed = httpx.get(simulator_url + "/v1/files/list", params={"purpose": "video_understanding"}, headers=AUTH)
    assert file in listed.json()["files"]

    part = {"type": "video", "source": {"type": "url", "url": f"mm_file://{file_id}", "fps": 2}}
    assert count(simulator_url, part) == 10 * 200  # 5 s x 2 fps
    # The call bills what count_tokens said, in both formats.
    message = {"role": "user", "content": [part, {"type": "text", "text": "what?"}]}
    r = httpx.post(
        simulator_url + "/anthropic/v1/messages",
        json={"model": "MiniMax-M3", "max_tokens": 32, "messages": [message]},
        headers=AUTH,
    )
    assert r.json()["usage"]["input_tokens"] == BASE + 2000
    openai_part = {"type": "video_url", "video_url": {"url": f"mm_file://{file_id}", "fps": 2}}
    r = httpx.post(
        simulator_url + "/v1/chat/completions",
        json={"model": "MiniMax-M3", "max_tokens": 32, "messages": [{"role": "user", "content": [openai_part]}]},
        headers=AUTH,
    )
    assert r.json()["usage"]["prompt_tokens"] == 3 + 4 + 2000

    deleted = httpx.post(
        simulator_url + "/v1/files/delete", json={"file_id": file_id, "purpose": "video_understanding"}, headers=AUTH
    )
    assert deleted.json()["file_id"] == file_id
    body = {"model": "MiniMax-M3", "messages": [message]}
    r = httpx.post(simulator_url + "/anthropic/v1/messages/count_tokens", json=body, headers=AUTH)
    assert r.status_code == 400
    assert f"file {file_id} not found" in r.json()["error"]["message"]
    r = httpx.get(simulator_url + "/v1/files/retrieve", params={"file_id": file_id}, headers=AUTH)
    assert r.status_code == 404


@pytest.mark.parametrize(
    ("data", "purpose", "status", "words"),
    [
        (b"%PDF-1.7 not a video", "video_understanding", 400, "unsupported video format"),
        (sample("video/mp4"), "homework", 400, "purpose must be one of"),
        (b"", "video_understanding", 400, "empty"),
    ],
)
def test_uploads_are_checked(simulator_url: str, data: bytes, purpose: str, status: int, words: str) -> None:
    r = upload(simulator_url, data, purpose)
    assert r.status_code == status
    assert words in r.json()["error"]["message"]
    assert r.json()["base_resp"]["status_code"] == 2013


def test_uploads_need_the_key(simulator_url: str) -> None:
    r = httpx.post(simulator_url + "/v1/files/upload", files={"file": ("v.mp4", sample("video/mp4"))})
    assert r.status_code == 401
