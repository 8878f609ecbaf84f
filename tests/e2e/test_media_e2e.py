"""Images, videos and long documents through real processes: the API (in process, real commits), the scheduler,
a Celery worker and the simulator, with the file store in a directory every process shares."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api.app import create_app
from service.cli import app as cli
from service.config import SIMULATOR_API_KEY
from simulator.tokens import input_tokens
from tests.e2e.conftest import TERMINAL, Stack
from tests.media.samples import sample
from tests.procs import Proc, free_port, wait_http

pytestmark = pytest.mark.e2e


class MediaStack(Stack):
    """The e2e stack with a files directory of its own, given to the worker processes and the API alike."""

    def start(self, name: str, argv: list[str]) -> Proc:
        self.env["MMJOBS_FILES_DIR"] = str(self.log_dir / "files")
        return super().start(name, argv)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaStack]:
    s = MediaStack(tmp_path_factory.mktemp("media-e2e"))
    try:
        s.settings = s.settings.model_copy(update={"files_dir": str(s.log_dir / "files")})
        s.client.close()
        s.client = TestClient(create_app(s.settings))
        yield s
    finally:
        s.close()


def m3(stack: Stack, content: list[dict[str, Any]], max_tokens: int = 200) -> str:
    params = {"max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    r = stack.client.post("/v1/jobs", json={"model": "MiniMax-M3", "params": params}, headers=stack.auth)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def sim_uploads(stack: Stack) -> list[dict[str, Any]]:
    auth = {"Authorization": f"Bearer {SIMULATOR_API_KEY}"}
    return list(httpx.get(stack.sim_url + "/v1/files/list", headers=auth, timeout=5).json()["files"])


def test_an_uploaded_video_is_sent_once_to_minimax_and_billed_by_its_frames(stack: MediaStack) -> None:
    data = sample("video/mp4", 3_000_000)  # 3 s by the simulator's rule
    r = stack.client.post(
        "/v1/files",
        files={"file": ("talk.mp4", data, "video/mp4")},
        data={"purpose": "video_understanding"},
        headers=stack.auth,
    )
    assert r.status_code == 201, r.text
    file = r.json()
    content: list[dict[str, Any]] = [
        {"type": "video", "source": {"type": "url", "url": file["reference"], "fps": 2}},
        {"type": "text", "text": "What happens in this talk?"},
    ]
    first = stack.wait_status(m3(stack, content), TERMINAL)
    assert first["status"] == "succeeded", first
    billed = stack.ledger()[first["result"]["upstream_request_id"]]
    # What the worker sent: the video as mm_file://ID, 3 s x 2 fps x 200 tokens, plus the text.
    text_only = input_tokens(system=None, messages=[{"role": "user", "content": content[1:]}], tools=None)
    assert first["usage"]["input_tokens"] == billed["input_tokens"] == text_only + 6 * 200
    assert float(first["usage"]["cost_usd"]) > 0
    stored = stack.client.get(f"/v1/files/{file['id']}", headers=stack.auth).json()
    assert stored["minimax_file_id"] is not None
    [uploaded] = [f for f in sim_uploads(stack) if f["filename"].startswith(file["id"])]
    assert str(uploaded["file_id"]) == stored["minimax_file_id"]
    assert uploaded["bytes"] == len(data)

    second = stack.wait_status(m3(stack, content), TERMINAL)
    assert second["status"] == "succeeded", second
    assert second["usage"]["input_tokens"] == first["usage"]["input_tokens"]
    assert len([f for f in sim_uploads(stack) if f["filename"].startswith(file["id"])]) == 1  # reused


def test_a_base64_video_and_an_inline_image_in_the_openai_format(stack: MediaStack) -> None:
    video = base64.b64encode(sample("video/x-matroska", 2_000_000)).decode()
    image = base64.b64encode(sample("image/jpeg", 50_000)).decode()
    content = [
        {"type": "video_url", "video_url": {"url": f"data:video/x-matroska;base64,{video}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}", "detail": "high"}},
        {"type": "text", "text": "Compare them."},
    ]
    messages = [{"role": "user", "content": content}]
    params = {"max_tokens": 200, "messages": messages}
    r = stack.client.post(
        "/v1/jobs", json={"model": "MiniMax-M3", "format": "openai", "params": params}, headers=stack.auth
    )
    assert r.status_code == 202, r.text
    job = stack.wait_status(r.json()["id"], TERMINAL)
    assert job["status"] == "succeeded", job
    # 2 s x 1 fps x 50 (low) + 6000 (a high-detail image) + the text, as the simulator billed it.
    expected = input_tokens(system=None, messages=messages, tools=None)
    assert (
        expected
        == input_tokens(system=None, messages=[{"role": "user", "content": content[2:]}], tools=None) + 100 + 6000
    )
    assert job["usage"]["input_tokens"] == expected


def test_a_long_document_over_the_window_fails_before_it_is_sent(stack: MediaStack) -> None:
    document = "lorem ipsum dolor sit amet, " * 128_000  # about 896,000 tokens
    video = {"type": "url", "url": "https://cdn.example.com/talk.mp4?sim_seconds=120", "fps": 2, "detail": "high"}
    content: list[dict[str, Any]] = [{"type": "text", "text": document}, {"type": "video", "source": video}]
    calls_before = len(stack.ledger())
    job = stack.wait_status(m3(stack, content, max_tokens=1000), TERMINAL, timeout=60)
    assert job["status"] == "failed", job
    exact = input_tokens(system=None, messages=[{"role": "user", "content": content}], tools=None)
    assert job["counted_input_tokens"] == exact
    assert job["estimated_input_tokens"] < exact
    assert job["error"]["type"] == "context_window_exceeded"
    assert job["error"]["classification"] == "permanent"
    assert f"MiniMax counts {exact:,} input tokens" in job["error"]["message"]
    assert [a["classification"] for a in job["attempts"]] == ["permanent"]
    assert len(stack.ledger()) == calls_before  # no 2013 paid for
    assert job["usage"]["input_tokens"] == 0


def test_the_video_cli_uploads_submits_and_waits(stack: MediaStack, tmp_path: Path) -> None:
    port = free_port()
    api = stack.start("api", ["-m", "service.cli", "api", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz", api)
    clip = tmp_path / "clip.mov"
    clip.write_bytes(sample("video/quicktime", 1_500_000))
    prompt = "Who speaks first?"
    args = ["video", "analyze", str(clip), "--prompt", prompt, "--fps", "2", "--detail", "low", "--interval", "0.2"]
    env = {"MMJOBS_API_URL": url, "MMJOBS_API_KEY": stack.api_key, "COLUMNS": "200"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output + stack.logs()
    assert "uploaded file-" in result.stderr
    assert "video/quicktime" in result.stderr
    assert "succeeded" in result.stderr
    assert f"You said: {prompt}" in result.stdout
    # 2 s (rounded up) x 2 fps x 50 tokens (low detail), plus the prompt.
    text = input_tokens(
        system=None, messages=[{"role": "user", "content": [{"type": "text", "text": prompt}]}], tools=None
    )
    assert f"{text + 4 * 50:,} input" in result.stderr

    failed = CliRunner().invoke(cli, ["video", "analyze", str(tmp_path / "none.mp4"), "--prompt", "x"], env=env)
    assert failed.exit_code == 1
    assert "no such file" in failed.stderr
