"""The file store's contract, run against both backends: the directory, and S3 (a local moto server)."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from service.files import s3
from service.files.storage import DirStorage, Storage, StoredFileMissing, opened, write_all


def test_write_commit_read_and_remove(store: Storage) -> None:
    data = b"first line\nsecond line\n"
    written = write_all(store, "file-a", io.BytesIO(data))
    assert (written.size, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert written.head == data[:64]
    with opened(store, "file-a") as handle:
        assert list(handle) == [b"first line\n", b"second line\n"]
    store.remove("file-a")
    with pytest.raises(StoredFileMissing):
        store.open("file-a")
    store.remove("file-a")  # removing twice is fine


def test_a_large_file_streams_in_parts(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part: three parts here
    data = os.urandom(12 * 1024 * 1024 + 17)
    writer = store.writer("file-big")
    for start in range(0, len(data), 1_000_003):
        writer.write(data[start : start + 1_000_003])
    writer.commit()
    assert writer.sha256 == hashlib.sha256(data).hexdigest()
    with opened(store, "file-big") as handle:
        got = b"".join(iter(lambda: handle.read(1 << 20), b""))
    assert got == data


def test_nothing_is_visible_before_commit_and_an_abort_leaves_nothing(store: Storage) -> None:
    writer = store.writer("file-x")
    writer.write(b"x" * 100)
    with pytest.raises(StoredFileMissing):
        store.open("file-x")
    writer.abort()
    with pytest.raises(StoredFileMissing):
        store.open("file-x")
    if isinstance(store, DirStorage):
        assert list(store.root.iterdir()) == []


def test_missing_file_is_named(store: Storage) -> None:
    with pytest.raises(StoredFileMissing, match="file-none"):
        store.open("file-none")


def test_an_abort_after_parts_were_sent_leaves_nothing(store: Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "PART_BYTES", 5 * 1024 * 1024)
    writer = store.writer("file-half")
    writer.write(os.urandom(6 * 1024 * 1024))
    writer.abort()
    with pytest.raises(StoredFileMissing):
        store.open("file-half")
