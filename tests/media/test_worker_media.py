"""`workers.media.prepare` against the simulator's Files API: a video is uploaded once, its MiniMax id reused while
young, uploaded again once old; concurrent jobs share one upload; images go inline; bad references fail for good."""

from __future__ import annotations

import base64
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from service.db import transaction, utcnow
from service.models import File
from tests.media.conftest import Worker, claim_for, sim_files
from tests.media.samples import sample
from workers import media
from workers.providers import UpstreamError
from workers.runtime import Upstream


def video(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "video", "source": {"type": "url", "url": url, **options}}


def params(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"max_tokens": 64, "messages": [{"role": "user", "content": [*parts, {"type": "text", "text": "?"}]}]}


def uploads_of(simulator_url: str, file: File) -> list[dict[str, Any]]:
    return [f for f in sim_files(simulator_url) if f["filename"].startswith(file.id)]


def test_a_video_is_uploaded_once_and_its_id_reused(worker: Worker, simulator_url: str) -> None:
    data = sample("video/mp4", 3_000_000)
    file = worker.add_file(data, media_type="video/mp4")
    original = params(video(f"mmjobs_file://{file.id}", fps=2, detail="low"))
    claim = claim_for("job_a", worker.tenant_id, original)

    prepared = media.prepare(claim, worker.runtime, worker.upstream)
    source = prepared.params["messages"][0]["content"][0]["source"]
    [uploaded] = uploads_of(simulator_url, file)
    assert source == {"type": "url", "url": f"mm_file://{uploaded['file_id']}", "fps": 2, "detail": "low"}
    assert uploaded["bytes"] == len(data)
    assert uploaded["purpose"] == "video_understanding"
    row = worker.file(file.id)
    assert row.minimax_file_id == str(uploaded["file_id"])
    assert row.minimax_uploaded_at is not None
    assert row.minimax_upload_until is None
    # The job's own params are untouched (the stored request keeps our reference).
    assert original["messages"][0]["content"][0]["source"]["url"] == f"mmjobs_file://{file.id}"

    again = media.prepare(claim_for("job_b", worker.tenant_id, original), worker.runtime, worker.upstream)
    assert again.params["messages"][0]["content"][0]["source"]["url"] == source["url"]
    assert len(uploads_of(simulator_url, file)) == 1


def test_each_upstream_account_gets_its_own_upload(worker: Worker, simulator_url: str) -> None:
    """A MiniMax file id is valid only in the account that uploaded it: a job whose permit is on another account
    (another key, or another base URL) uploads the video there and sends that id, never the first account's."""
    file = worker.add_file(sample("video/mp4", 20_000), media_type="video/mp4")
    claim = claim_for("job_acct", worker.tenant_id, params(video(f"mmjobs_file://{file.id}")))
    first, second = worker.upstream, Upstream(simulator_url.replace("127.0.0.1", "localhost"), worker.api_key)
    assert first.account != second.account

    def sent(upstream: Upstream) -> str:
        url: str = media.prepare(claim, worker.runtime, upstream).params["messages"][0]["content"][0]["source"]["url"]
        return url

    in_first = sent(first)
    in_second = sent(second)
    assert in_second != in_first
    assert len(uploads_of(simulator_url, file)) == 2
    assert worker.file(file.id).minimax_account == second.account
    assert sent(second) == in_second  # kept for the account it belongs to
    assert len(uploads_of(simulator_url, file)) == 2


def test_an_old_upload_is_uploaded_again(worker: Worker, simulator_url: str) -> None:
    file = worker.add_file(sample("video/x-matroska", 10_000), media_type="video/x-matroska")
    claim = claim_for("job_c", worker.tenant_id, params(video(f"mmjobs_file://{file.id}")))
    first = media.prepare(claim, worker.runtime, worker.upstream).params["messages"][0]["content"][0]["source"]["url"]
    age = timedelta(seconds=worker.settings.minimax_file_reuse_seconds + 60)
    with transaction(worker.session_factory) as session:
        session.execute(update(File).where(File.id == file.id).values(minimax_uploaded_at=utcnow() - age))
    second = media.prepare(claim, worker.runtime, worker.upstream).params["messages"][0]["content"][0]["source"]["url"]
    assert second != first
    assert len(uploads_of(simulator_url, file)) == 2
    assert worker.file(file.id).minimax_file_id == second.removeprefix("mm_file://")


def test_concurrent_jobs_share_one_upload(worker: Worker, simulator_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    file = worker.add_file(sample("video/mp4", 200_000), media_type="video/mp4")
    real_upload = media.upload

    def slow_upload(*args: Any) -> str:
        time.sleep(0.5)  # everyone else arrives while the first upload runs
        return real_upload(*args)

    monkeypatch.setattr(media, "upload", slow_upload)
    urls: list[str] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            claim = claim_for(f"job_{i}", worker.tenant_id, params(video(f"mmjobs_file://{file.id}")))
            urls.append(
                media.prepare(claim, worker.runtime, worker.upstream).params["messages"][0]["content"][0]["source"][
                    "url"
                ]
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(urls) == 8
    assert len(set(urls)) == 1
    assert len(uploads_of(simulator_url, file)) == 1


def test_a_dead_uploaders_hold_is_taken_over(worker: Worker, simulator_url: str) -> None:
    file = worker.add_file(sample("video/mp4", 5000), media_type="video/mp4")
    with transaction(worker.session_factory) as session:
        until = utcnow() + timedelta(seconds=1)
        session.execute(update(File).where(File.id == file.id).values(minimax_upload_until=until))
    started = time.monotonic()
    media.prepare(
        claim_for("job_d", worker.tenant_id, params(video(f"mmjobs_file://{file.id}"))), worker.runtime, worker.upstream
    )
    assert time.monotonic() - started >= 0.9  # it waited for the hold to run out, then uploaded itself
    assert len(uploads_of(simulator_url, file)) == 1


def test_images_go_inline_in_both_formats(worker: Worker) -> None:
    data = sample("image/webp", 4000)
    file = worker.add_file(data, media_type="image/webp")
    ref = f"mmjobs_file://{file.id}"
    anthropic = params({"type": "image", "source": {"type": "url", "url": ref, "detail": "high"}})
    source = media.prepare(claim_for("job_e", worker.tenant_id, anthropic), worker.runtime, worker.upstream).params[
        "messages"
    ][0]["content"][0]["source"]
    assert source == {
        "type": "base64",
        "media_type": "image/webp",
        "data": base64.b64encode(data).decode(),
        "detail": "high",
    }
    openai = params({"type": "image_url", "image_url": {"url": ref}})
    prepared = media.prepare(
        claim_for("job_f", worker.tenant_id, openai, fmt="openai"), worker.runtime, worker.upstream
    )
    assert prepared.params["messages"][0]["content"][0]["image_url"] == {
        "url": "data:image/webp;base64," + base64.b64encode(data).decode()
    }


def test_openai_video_parts_get_the_minimax_id(worker: Worker, simulator_url: str) -> None:
    file = worker.add_file(sample("video/x-msvideo", 5000), media_type="video/x-msvideo")
    part = {"type": "video_url", "video_url": {"url": f"mmjobs_file://{file.id}", "fps": 1}}
    prepared = media.prepare(
        claim_for("job_g", worker.tenant_id, params(part), fmt="openai"), worker.runtime, worker.upstream
    )
    [uploaded] = uploads_of(simulator_url, file)
    assert uploaded["filename"].endswith(".avi")
    assert prepared.params["messages"][0]["content"][0]["video_url"] == {
        "url": f"mm_file://{uploaded['file_id']}",
        "fps": 1,
    }


def test_a_request_without_references_is_passed_through_unchanged(worker: Worker) -> None:
    claim = claim_for("job_h", worker.tenant_id, params(video("https://cdn.example.com/v.mp4")))
    assert media.prepare(claim, worker.runtime, worker.upstream) is claim


@pytest.mark.parametrize("case", ["missing", "other_tenant", "wrong_kind"])
def test_bad_references_fail_permanently(worker: Worker, case: str) -> None:
    if case == "missing":
        ref, kind = "mmjobs_file://file-" + "0" * 26, "video"
    elif case == "other_tenant":
        other = worker.add_file(sample("video/mp4"), media_type="video/mp4", tenant_id=_other_tenant(worker))
        ref, kind = f"mmjobs_file://{other.id}", "video"
    else:
        ref, kind = f"mmjobs_file://{worker.add_file(sample('video/mp4'), media_type='video/mp4').id}", "image"
    claim = claim_for("job_i", worker.tenant_id, params({"type": kind, "source": {"type": "url", "url": ref}}))
    with pytest.raises(UpstreamError) as caught:
        media.prepare(claim, worker.runtime, worker.upstream)
    assert caught.value.classification == "permanent"
    assert caught.value.error_type == ("invalid_file" if case == "wrong_kind" else "file_not_found")
    assert ref in caught.value.message


def test_a_refused_upload_fails_and_releases_the_hold(worker: Worker) -> None:
    file = worker.add_file(sample("video/mp4"), media_type="video/mp4")
    worker.api_key = "sk-wrong"
    claim = claim_for("job_j", worker.tenant_id, params(video(f"mmjobs_file://{file.id}")))
    with pytest.raises(UpstreamError) as caught:
        media.prepare(claim, worker.runtime, worker.upstream)
    assert (caught.value.http_status, caught.value.classification) == (401, "permanent")
    row = worker.file(file.id)
    assert row.minimax_upload_until is None
    assert row.minimax_file_id is None


def _other_tenant(worker: Worker) -> str:
    from service.tenants import service as tenants

    with transaction(worker.session_factory) as session:
        return tenants.create_key(session, tenant_name=f"other-{time.monotonic_ns()}").key.tenant_id
