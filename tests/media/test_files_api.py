"""`POST/GET/DELETE /v1/files`: streamed into the store with its checksum, typed by content, limited in size,
isolated per tenant."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.api.errors import APIError
from service.config import Settings
from service.files import storage
from service.files import upload as upload_stream
from service.models import File
from tests.conftest import make_key
from tests.media.samples import sample

LIMIT = 3 * 1024 * 1024


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": str(tmp_path / "files"), "max_file_bytes": LIMIT})


def files_dir(settings: Settings) -> Path:
    return Path(str(settings.files_dir))


def listing(settings: Settings) -> list[str]:
    folder = files_dir(settings)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def stored(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(File)) or 0)


def upload(
    client: TestClient, auth: dict[str, str], data: bytes, *, purpose: str | None = "video_understanding", **kw: Any
) -> Any:
    form = {"purpose": purpose} if purpose is not None else {}
    return client.post("/v1/files", files={"file": ("clip.mp4", data, "video/mp4")}, data=form, headers=auth, **kw)


def chunked(data: bytes, *, purpose: str, filename: str = "clip.mp4", size: int = 65536) -> Iterator[bytes]:
    """A multipart body sent as it is produced, in chunks (no Content-Length)."""
    yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="%s"\r\n\r\n' % filename.encode()
    for start in range(0, len(data), size):
        yield data[start : start + size]
    yield b'\r\n--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n%s\r\n--xyz--\r\n' % purpose.encode()


def test_upload_is_stored_with_its_checksum_and_sniffed_type(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    data = sample("video/quicktime", 2_500_000)
    r = client.post(
        "/v1/files",
        content=chunked(data, purpose="video_understanding"),
        headers={**auth, "content-type": "multipart/form-data; boundary=xyz"},
    )
    assert r.status_code == 201, r.text
    file = r.json()
    assert file["id"].startswith("file-")
    assert file["bytes"] == len(data)
    assert file["sha256"] == hashlib.sha256(data).hexdigest()
    assert file["media_type"] == "video/quicktime"  # from the content, whatever the name says
    assert (file["purpose"], file["filename"]) == ("video_understanding", "clip.mp4")
    assert file["reference"] == f"mmjobs_file://{file['id']}"
    assert file["minimax_file_id"] is None
    assert (files_dir(settings) / file["id"]).read_bytes() == data
    assert listing(settings) == [file["id"]]
    assert client.get(f"/v1/files/{file['id']}", headers=auth).json() == file


def test_the_body_is_written_to_the_store_while_it_arrives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = sample("video/mp4", 5_000_000)
    parts = list(chunked(data, purpose="video_understanding"))
    sent = 0
    seen_at_write: list[int] = []
    real_write = storage.DirWriter.write

    def spy(self: storage.DirWriter, chunk: bytes) -> None:
        seen_at_write.append(sent)
        real_write(self, chunk)

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for part in parts:
            sent += 1
            yield part

    monkeypatch.setattr(storage.DirWriter, "write", spy)
    store = storage.DirStorage(tmp_path)
    content_type = "multipart/form-data; boundary=xyz"
    received = anyio.run(
        lambda: upload_stream.receive(body(), content_type, store=store, file_id="f", max_bytes=LIMIT * 2)
    )
    assert received.writer is not None
    assert received.writer.size == len(data)
    assert received.fields == {"purpose": "video_understanding"}
    # Megabyte writes, the first long before the last chunk arrived: the upload is never held whole.
    assert len(seen_at_write) >= 4
    assert seen_at_write[0] < len(parts) // 2
    assert (tmp_path / "f").read_bytes() == data
    # Over the limit: refused while streaming, and the part written so far is gone.
    with pytest.raises(APIError) as caught:
        anyio.run(lambda: upload_stream.receive(body(), content_type, store=store, file_id="g", max_bytes=2_000_000))
    assert (caught.value.status, caught.value.field) == (413, "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_image_purpose_and_type_must_agree(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    png = sample("image/png", 5000)
    r = upload(client, auth, png)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "file"
    assert "PNG, a image" in r.json()["error"]["message"]
    r = upload(client, auth, b"%PDF-1.7\n" + bytes(2000), purpose="image")
    assert r.status_code == 422
    assert "not a supported image format (JPEG, PNG, GIF, WEBP)" in r.json()["error"]["message"]
    assert stored(session) == 0
    assert listing(settings) == []
    r = upload(client, auth, png, purpose="image")
    assert r.status_code == 201, r.text
    assert r.json()["media_type"] == "image/png"


@pytest.mark.parametrize(
    ("purpose", "query", "field"),
    [(None, None, "purpose"), ("batch", None, "purpose"), (None, "fine-tune", "purpose")],
)
def test_purpose_is_required_and_checked(
    client: TestClient, auth: dict[str, str], session: Session, purpose: str | None, query: str | None, field: str
) -> None:
    params = {"purpose": query} if query else None
    r = upload(client, auth, sample("video/mp4"), purpose=purpose, params=params)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == field
    assert stored(session) == 0


def test_the_size_limit_is_enforced_while_streaming(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    # No Content-Length: only the check while streaming can stop it.
    headers = {**auth, "content-type": "multipart/form-data; boundary=xyz"}
    data = sample("video/mp4", LIMIT + 200_000)
    r = client.post("/v1/files", content=chunked(data, purpose="video_understanding"), headers=headers)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "request_too_large"
    assert stored(session) == 0
    assert listing(settings) == []
    # The declared length is refused before anything is read, and exactly the limit passes.
    r = upload(client, auth, sample("video/mp4", LIMIT + 1))
    assert r.status_code == 413
    assert upload(client, auth, sample("video/mp4", LIMIT - 400)).status_code == 201


def test_the_default_limit_is_512_mb() -> None:
    assert Settings().max_file_bytes == 512 * 1024 * 1024


def test_not_multipart_is_refused(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/files", content=b"raw", headers={**auth, "content-type": "video/mp4"})
    assert r.status_code == 415
    assert "multipart/form-data" in r.json()["error"]["message"]


def test_other_tenants_see_404_and_delete_removes_the_bytes(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings
) -> None:
    file = upload(client, auth, sample("video/mp4")).json()
    other = {"Authorization": f"Bearer {make_key(session, 'globex')}"}
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/files/{file['id']}", headers=other)
        assert r.status_code == 404
        assert r.json()["error"]["field"] == "file_id"
    assert (files_dir(settings) / file["id"]).exists()
    r = client.delete(f"/v1/files/{file['id']}", headers=auth)
    assert r.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}", headers=auth).status_code == 404
    assert not (files_dir(settings) / file["id"]).exists()


def test_a_job_references_an_uploaded_video(client: TestClient, auth: dict[str, str]) -> None:
    file = upload(client, auth, sample("video/mp4")).json()
    part = {"type": "video", "source": {"type": "url", "url": file["reference"], "fps": 2, "detail": "low"}}
    params = {"max_tokens": 100, "messages": [{"role": "user", "content": [part, {"type": "text", "text": "?"}]}]}
    r = client.post("/v1/jobs", json={"model": "MiniMax-M3", "params": params}, headers=auth)
    assert r.status_code == 202, r.text
    assert r.json()["counted_input_tokens"] is None
