"""Smallest byte strings each format's magic recognizes, padded to any size: enough for sniffing and sizes."""

from __future__ import annotations

import base64

HEADS = {
    "image/jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
    "image/png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "image/gif": b"GIF89a\x01\x00\x01\x00",
    "image/webp": b"RIFF\x24\x00\x00\x00WEBPVP8 ",
    "video/mp4": b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00",
    "video/quicktime": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00",
    "video/x-msvideo": b"RIFF\x24\x00\x00\x00AVI LIST",
    "video/x-matroska": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska",
}
WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm"


def sample(media_type: str, size: int = 1024) -> bytes:
    head = HEADS[media_type]
    return head + b"\x00" * max(0, size - len(head))


def b64(media_type: str, size: int = 1024) -> str:
    return base64.b64encode(sample(media_type, size)).decode()
