"""Intake checks of image and video parts, in both formats: every error names its field, formats are told by
content, sizes are judged without decoding."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.errors import APIError
from service.jobs.validation import check_request
from service.media import formats
from service.media import validation as media_validation
from tests.media.samples import HEADS, WEBM, b64

M3 = "MiniMax-M3"
C = "params.messages[0].content[1]"


def anthropic(source: dict[str, Any], kind: str = "video") -> dict[str, Any]:
    content = [{"type": "text", "text": "describe"}, {"type": kind, "source": source}]
    return {"max_tokens": 100, "messages": [{"role": "user", "content": content}]}


def openai(inner: dict[str, Any], kind: str = "video") -> dict[str, Any]:
    part = f"{kind}_url"
    content = [{"type": "text", "text": "describe"}, {"type": part, part: inner}]
    return {"max_tokens": 100, "messages": [{"role": "user", "content": content}]}


def refused(params: dict[str, Any], fmt: str = "anthropic", model: str = M3) -> APIError:
    with pytest.raises(APIError) as caught:
        check_request(model=model, fmt=fmt, params=params)
    assert caught.value.status == 422
    assert caught.value.field is not None
    assert caught.value.message.startswith(caught.value.field + ": ")
    return caught.value


def url(u: str, **options: Any) -> dict[str, Any]:
    return {"type": "url", "url": u, **options}


def inline(media_type: str, data: str, **options: Any) -> dict[str, Any]:
    return {"type": "base64", "media_type": media_type, "data": data, **options}


@pytest.mark.parametrize("media_type", sorted(HEADS))
def test_every_format_is_sniffed_and_accepted_in_both_formats(media_type: str) -> None:
    kind = media_type.split("/")[0]
    data = b64(media_type)
    check_request(model=M3, fmt="anthropic", params=anthropic(inline(media_type, data), kind))
    check_request(model=M3, fmt="openai", params=openai({"url": f"data:{media_type};base64,{data}"}, kind))
    assert formats.sniff(base64.b64decode(data)[:64]) is not None


def test_accepted_references() -> None:
    for u in ("https://cdn.example.com/v.mp4", "mm_file://123456789", "mmjobs_file://file-" + "0" * 26):
        check_request(model=M3, fmt="anthropic", params=anthropic(url(u, detail="high", fps=2)))
        check_request(model=M3, fmt="openai", params=openai({"url": u, "fps": 0.2, "max_long_side_pixel": 1024}))


S, V, IM = f"{C}.source", f"{C}.video_url", f"{C}.image_url"
A, OA = "anthropic", "openai"
MP4 = b64("video/mp4")
WEBM_DATA = base64.b64encode(WEBM + bytes(40)).decode()
PDF_DATA = base64.b64encode(b"%PDF-1.7" + bytes(80)).decode()
EVIL = "http://169.254.169.254/latest"


@pytest.mark.parametrize(
    ("params", "fmt", "field", "words"),
    [
        (anthropic(url("https://e.com/v.mp4", detail="ultra")), A, f"{S}.detail", "low, default"),
        (anthropic(url("https://e.com/v.mp4", fps=6)), A, f"{S}.fps", "outside [0.2, 5]"),
        (anthropic(url("https://e.com/v.mp4", fps=0.1)), A, f"{S}.fps", "outside"),
        (anthropic(url("https://e.com/v.mp4", fps="1")), A, f"{S}.fps", "a number"),
        (anthropic(url("https://e.com/a.png", fps=1), "image"), A, f"{S}.fps", "video only"),
        (openai({"url": "https://e.com/v", "max_long_side_pixel": 0}), OA, f"{V}.max_long_side_pixel", "outside"),
        (openai({"url": "https://e.com/v", "max_long_side_pixel": 99999}), OA, f"{V}.max_long_side_pixel", "outside"),
        (openai({"url": "https://e.com/v", "max_long_side_pixel": 1.5}), OA, f"{V}.max_long_side_pixel", "integer"),
        (openai({"url": "https://e.com/v.mp4", "detail": "auto"}), OA, f"{V}.detail", "not one of"),
        (anthropic({"type": "file", "file_id": "x"}), A, f"{S}.type", "url or base64"),
        (anthropic(url("ftp://e.com/v.mp4")), A, f"{S}.url", "http(s) URL"),
        (anthropic(url("http://127.0.0.1/v.mp4")), A, f"{S}.url", "loopback"),
        (anthropic(url(EVIL)), A, f"{S}.url", "link-local"),
        (anthropic(url("http://10.0.0.8/v.mp4")), A, f"{S}.url", "private"),
        (anthropic(url("http://[::1]/v.mp4")), A, f"{S}.url", "loopback"),
        (anthropic(url("http://localhost:8080/v.mp4")), A, f"{S}.url", "not a public host"),
        (anthropic(url("http://metadata.google.internal/")), A, f"{S}.url", "not a public host"),
        (anthropic(url("http://2130706433/v.mp4")), A, f"{S}.url", "plain IP"),
        (anthropic(url("https://user:pw@e.com/v.mp4")), A, f"{S}.url", "user name"),
        (anthropic(url("mm_file://abc")), A, f"{S}.url", "a number"),
        (anthropic(url("mmjobs_file://nope")), A, f"{S}.url", "not a file of ours"),
        (anthropic(url("data:video/mp4;base64,AAAA")), A, f"{S}.url", "http(s) URL"),
        (openai({"url": "data:video/mp4,plain"}), OA, f"{V}.url", "data:MEDIA_TYPE;base64"),
        (openai({"detail": "low"}), OA, f"{V}.url", "required"),
        (openai("https://e.com/v.mp4"), OA, V, "an object"),  # type: ignore[arg-type]
        (anthropic(inline("video/mp4", b64("image/png"))), A, f"{S}.data", "PNG, a image"),
        (anthropic(inline("video/mp4", b64("video/x-msvideo"))), A, f"{S}.media_type", "but the content is AVI"),
        (anthropic(inline("image/png", b64("image/jpeg")), "image"), A, f"{S}.media_type", "is JPEG"),
        (anthropic(inline("video/webm", MP4)), A, f"{S}.media_type", "not a supported type"),
        (anthropic(inline("video/x-matroska", WEBM_DATA)), A, f"{S}.data", "not a supported video"),
        (anthropic(inline("image/png", PDF_DATA), "image"), A, f"{S}.data", "not a supported image"),
        (anthropic(inline("video/mp4", "")), A, f"{S}.data", "empty"),
        (anthropic(inline("video/mp4", MP4[:-1])), A, f"{S}.data", "multiple of 4"),
        (anthropic(inline("video/mp4", MP4[:-4] + "!!!!")), A, f"{S}.data", "not valid base64"),
        (anthropic(inline("video/mp4", "é" + MP4[1:])), A, f"{S}.data", "non-ASCII"),
        (anthropic(inline("video/mp4", "!" + MP4[1:])), A, f"{S}.data", "not valid base64"),
        (anthropic({"type": "base64", "data": MP4}), A, f"{S}.media_type", "required"),
        (openai({"url": "data:image/png;base64," + MP4}, "image"), OA, f"{IM}.url", "MP4, a video"),
        (openai({"url": "data:image/gif;base64," + b64("image/png")}, "image"), OA, f"{IM}.url", "says image/gif"),
    ],
)
def test_each_problem_names_its_field(params: dict[str, Any], fmt: str, field: str, words: str) -> None:
    error = refused(params, fmt)
    assert error.field == field
    assert words in error.message


def test_a_media_part_in_a_tool_result_is_checked_too() -> None:
    result = {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": url("ftp://x/a")}]}
    params = {"messages": [{"role": "user", "content": [result]}]}
    assert refused(params).field == "params.messages[0].content[0].content[0].source.url"


def test_media_with_m2_is_refused_before_the_media_checks() -> None:
    error = refused(anthropic(url("https://e.com/v.mp4", fps=99)), model="MiniMax-M2.7")
    assert error.field == C
    assert "MiniMax-M3" in error.message


def test_size_limits_are_judged_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = base64.b64decode

    def spy(data: str | bytes, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", spy)
    head = base64.b64encode(HEADS["video/mp4"] + bytes(2)).decode()  # 18 bytes -> 24 chars, no padding
    big_video = head + "A" * ((50 * formats.MB + 3) // 3 * 4)
    error = refused(anthropic(inline("video/mp4", big_video)))
    assert error.field == f"{C}.source.data"
    assert "over MiniMax's 50 MB limit" in error.message
    assert "POST /v1/files" in error.message
    big_image = base64.b64encode(HEADS["image/png"]).decode() + "A" * (10 * formats.MB // 3 * 4 + 8)
    assert "10 MB" in refused(openai({"url": "data:image/png;base64," + big_image}, "image"), "openai").message
    # Exactly at the limit passes, and only the first bytes were ever decoded.
    at_limit = head + "A" * ((50 * formats.MB - 18) // 3 * 4)
    assert media_validation.check_inline.__name__  # the path under test
    check_request(model=M3, fmt="anthropic", params=anthropic(inline("video/mp4", at_limit + "AA==")))
    assert decoded
    assert max(decoded) <= 84


def test_base64_size_from_length() -> None:
    for n in range(0, 12):
        data = base64.b64encode(bytes(n)).decode()
        assert formats.base64_size(data) == n


def test_jobs_api_names_the_field(client: TestClient, auth: dict[str, str]) -> None:
    body = {"model": M3, "params": anthropic(url("https://e.com/v.mp4", fps=9))}
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == f"{C}.source.fps"


def test_batch_lines_are_checked_with_the_line_named(client: TestClient, auth: dict[str, str]) -> None:
    good = {"custom_id": "a", "model": M3, "params": anthropic(url("https://e.com/v.mp4"))}
    bad = {"custom_id": "b", "model": M3, "params": anthropic(inline("video/mp4", b64("image/gif")))}
    r = client.post("/v1/batches", json={"requests": [good, bad]}, headers=auth)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert f"{C}.source.data" in error["message"]
    assert "GIF" in error["message"]
