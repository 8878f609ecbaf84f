"""The S3-compatible file store: a small AWS Signature Version 4 client on httpx (no SDK to install).

Path-style URLs (`ENDPOINT/BUCKET/KEY`), which AWS, MinIO, Ceph and R2 all accept. Small files are one PUT; a
file larger than one part (8 MiB) is a multipart upload whose parts are sent as they fill, so memory stays at one
part per upload; an aborted upload is aborted on the server too. Reads stream the object's body.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import httpx

from service.config import Settings
from service.files.storage import Digest, StoredFileMissing

PART_BYTES = 8 * 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")


class S3Error(Exception):
    """The object store refused or failed a request."""


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class S3Storage:
    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        region: str,
        access_key: str,
        secret_key: str,
        prefix: str = "",
        client: httpx.Client | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.prefix = prefix
        self.client = client or httpx.Client(timeout=httpx.Timeout(60, connect=10))

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        missing = [
            name
            for name, value in (
                ("MMJOBS_S3_BUCKET", settings.s3_bucket),
                ("MMJOBS_S3_ACCESS_KEY_ID", settings.s3_access_key_id),
                ("MMJOBS_S3_SECRET_ACCESS_KEY", settings.s3_secret_access_key),
            )
            if not value
        ]
        if missing:
            raise RuntimeError(f"MMJOBS_STORAGE=s3 needs {', '.join(missing)}")
        key = (settings.s3_endpoint_url, settings.s3_bucket, settings.s3_access_key_id, settings.s3_prefix)
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = cls(
                endpoint=settings.s3_endpoint_url,
                bucket=str(settings.s3_bucket),
                region=settings.s3_region,
                access_key=str(settings.s3_access_key_id),
                secret_key=str(settings.s3_secret_access_key),
                prefix=settings.s3_prefix,
            )
        return store

    # --- signing ---------------------------------------------------------------------------------------------

    def _path(self, file_id: str | None) -> str:
        path = f"/{self.bucket}"
        return path if file_id is None else f"{path}/{quote(self.prefix + file_id, safe='/-_.~')}"

    def request(
        self,
        method: str,
        file_id: str | None,
        *,
        query: dict[str, str] | None = None,
        body: bytes = b"",
        stream: bool = False,
    ) -> httpx.Response:
        """Send one signed request; raises S3Error for any answer >= 300 (404 as StoredFileMissing)."""
        path = self._path(file_id)
        query = query or {}
        canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
        now = datetime.now(UTC)
        stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        host = httpx.URL(self.endpoint).netloc.decode()
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [method, path, canonical_query, *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        key = _hmac(_hmac(_hmac(_hmac(f"AWS4{self.secret_key}".encode(), day), self.region), "s3"), "aws4_request")
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        url = f"{self.endpoint}{path}" + (f"?{canonical_query}" if canonical_query else "")
        try:
            request = self.client.build_request(method, url, headers=headers, content=body)
            response = self.client.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise S3Error(f"S3 {method} {path}: {exc}") from exc
        if response.status_code >= 300:
            text = response.read()[:300].decode(errors="replace")
            response.close()
            if response.status_code == 404 and file_id is not None:
                raise StoredFileMissing(f"the bytes of {file_id} are not in s3://{self.bucket}/{self.prefix}")
            raise S3Error(f"S3 {method} {path} answered {response.status_code}: {text}")
        return response

    # --- the Storage interface -------------------------------------------------------------------------------

    def writer(self, file_id: str) -> S3Writer:
        return S3Writer(self, file_id)

    def open(self, file_id: str) -> IO[bytes]:
        response = self.request("GET", file_id, stream=True)
        return io.BufferedReader(_ResponseReader(response), buffer_size=1024 * 1024)

    def remove(self, file_id: str) -> None:
        self.request("DELETE", file_id).close()

    def create_bucket(self) -> None:
        """Make the bucket (set-up and tests); an existing one of ours is fine."""
        try:
            self.request("PUT", None).close()
        except S3Error as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise


_STORES: dict[tuple[Any, ...], S3Storage] = {}


class S3Writer(Digest):
    """Buffers one part; a file that fits in one part is a single PUT, a larger one a multipart upload."""

    def __init__(self, store: S3Storage, file_id: str) -> None:
        super().__init__()
        self._store = store
        self._id = file_id
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._etags: list[str] = []

    def write(self, chunk: bytes) -> None:
        self.update(chunk)
        self._buffer += chunk
        while len(self._buffer) >= PART_BYTES:
            part = bytes(self._buffer[:PART_BYTES])
            del self._buffer[:PART_BYTES]
            self._send_part(part)

    def _send_part(self, part: bytes) -> None:
        if self._upload_id is None:
            answer = self._store.request("POST", self._id, query={"uploads": ""})
            found = _UPLOAD_ID.search(answer.content)
            if found is None:
                raise S3Error(f"S3 did not start a multipart upload: {answer.content[:200]!r}")
            self._upload_id = found.group(1).decode()
        number = str(len(self._etags) + 1)
        response = self._store.request(
            "PUT", self._id, query={"partNumber": number, "uploadId": self._upload_id}, body=part
        )
        self._etags.append(response.headers.get("etag", ""))

    def commit(self) -> None:
        if self._upload_id is None:
            self._store.request("PUT", self._id, body=bytes(self._buffer)).close()
            self._buffer.clear()
            return
        if self._buffer:
            self._send_part(bytes(self._buffer))
            self._buffer.clear()
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(tag)}</ETag></Part>"
            for n, tag in enumerate(self._etags, start=1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        answer = self._store.request("POST", self._id, query={"uploadId": self._upload_id}, body=body)
        if b"<Error>" in answer.content:  # S3 may fail a completion inside a 200 answer
            raise S3Error(f"S3 did not complete the upload: {answer.content[:300]!r}")

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._store.request("DELETE", self._id, query={"uploadId": upload_id}).close()
            except S3Error:
                pass  # the bucket's lifecycle rule for incomplete uploads is the backstop


class _ResponseReader(io.RawIOBase):
    """A streamed httpx response as a raw binary stream, so io.BufferedReader can read lines or chunks of it."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._chunks = response.iter_raw(1024 * 1024)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def close(self) -> None:
        if not self.closed:
            self._response.close()
        super().close()
