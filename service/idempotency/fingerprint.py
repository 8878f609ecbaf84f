"""What makes two requests "the same" for an Idempotency-Key: sha256 of the method, path, query and body.

The body is hashed as it streams, so a 256 MB upload is never held in memory for it. A multipart body's
boundary is random per encoding, so a client that retries an upload would never send the same bytes twice: the
boundary is hashed as a fixed token.
"""

from __future__ import annotations

import hashlib

_TOKEN = b"--<boundary>"


def boundary(content_type: str | None) -> bytes | None:
    """The multipart boundary named in a Content-Type header, if any."""
    if not content_type or not content_type.lower().startswith("multipart/"):
        return None
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "boundary" and value.strip('"'):
            return value.strip('"').encode("latin-1")
    return None


class Fingerprint:
    def __init__(self, *, method: str, path: str, query: bytes, content_type: str | None) -> None:
        self._hash = hashlib.sha256(f"{method.upper()} {path}?".encode() + query + b"\n")
        found = boundary(content_type)
        self._marker = b"--" + found if found else None
        self._pending = b""

    def update(self, chunk: bytes) -> None:
        if self._marker is None:
            self._hash.update(chunk)
            return
        data = self._pending + chunk
        # A marker split across two chunks must not escape: the last len(marker) - 1 bytes wait for the next one.
        cut = len(data) - (len(self._marker) - 1)
        out: list[bytes] = []
        start = 0
        while (found := data.find(self._marker, start)) != -1:
            out += [data[start:found], _TOKEN]
            start = found + len(self._marker)
        keep = max(start, cut)
        out.append(data[start:keep])
        self._hash.update(b"".join(out))
        self._pending = data[keep:]

    def hexdigest(self) -> str:
        final = self._hash.copy()
        final.update(self._pending if self._marker is None else self._pending.replace(self._marker, _TOKEN))
        return final.hexdigest()
