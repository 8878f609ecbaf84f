"""The S3-compatible file store, on boto3 (signing, retries with backoff, connection pooling are its own).

Path-style addressing (`ENDPOINT/BUCKET/KEY`), which AWS, MinIO, Ceph and R2 all accept. Writers are pushed chunks
as an upload streams in, so they drive S3's multipart upload themselves: a file that fits in one part (8 MiB) is one
PutObject; a larger one is a multipart upload whose parts are sent as they fill (memory stays at one part per
upload), each part call retried by boto3, and completed on commit; an aborted upload is aborted on the server too.
Reads stream the object's body.
"""

from __future__ import annotations

import io
from typing import IO, TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.config import Settings
from service.files.backend import Digest, StoredFileMissing

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

PART_BYTES = 8 * 1024 * 1024
_MISSING = ("NoSuchKey", "404", "NotFound")


class S3Error(Exception):
    """The object store refused or failed a request (after boto3's own retries)."""


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
        client: S3Client | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.bucket = bucket
        self.prefix = prefix
        self.client: S3Client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                # "standard": exponential backoff with jitter on throttling, 5xx and connection errors.
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=50,  # API threads and worker threads share one client
            ),
        )

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

    def key(self, file_id: str) -> str:
        return self.prefix + file_id

    def call(self, what: str, file_id: str | None, operation: Any, **kwargs: Any) -> Any:
        """One S3 operation; a missing object is StoredFileMissing, any other failure S3Error naming it."""
        try:
            return operation(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if file_id is not None and code in _MISSING:
                raise StoredFileMissing(f"the bytes of {file_id} are not in s3://{self.bucket}/{self.prefix}") from None
            raise S3Error(f"S3 {what} s3://{self.bucket}/{kwargs.get('Key', '')}: {exc}") from exc
        except BotoCoreError as exc:
            raise S3Error(f"S3 {what} s3://{self.bucket}/{kwargs.get('Key', '')}: {exc}") from exc

    # --- the Storage interface -------------------------------------------------------------------------------

    def writer(self, file_id: str) -> S3Writer:
        return S3Writer(self, file_id)

    def open(self, file_id: str) -> IO[bytes]:
        answer = self.call("GetObject", file_id, self.client.get_object, Key=self.key(file_id))
        return io.BufferedReader(_BodyReader(answer["Body"]), buffer_size=1024 * 1024)

    def remove(self, file_id: str) -> None:
        self.call("DeleteObject", None, self.client.delete_object, Key=self.key(file_id))

    def create_bucket(self) -> None:
        """Make the bucket (set-up and tests); an existing one of ours is fine."""
        try:
            self.call("CreateBucket", None, self.client.create_bucket)
        except S3Error as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise


_STORES: dict[tuple[Any, ...], S3Storage] = {}


class S3Writer(Digest):
    """Buffers one part; a file that fits in one part is a single PutObject, a larger one a multipart upload."""

    def __init__(self, store: S3Storage, file_id: str) -> None:
        super().__init__()
        self._store = store
        self._id = file_id
        self._key = store.key(file_id)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    def write(self, chunk: bytes) -> None:
        self.update(chunk)
        self._buffer += chunk
        while len(self._buffer) >= PART_BYTES:
            part = bytes(self._buffer[:PART_BYTES])
            del self._buffer[:PART_BYTES]
            self._send_part(part)

    def _send_part(self, part: bytes) -> None:
        client = self._store.client
        if self._upload_id is None:
            started = self._store.call("CreateMultipartUpload", None, client.create_multipart_upload, Key=self._key)
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        sent = self._store.call(
            "UploadPart", None, client.upload_part,
            Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part,
        )  # fmt: skip
        self._parts.append({"PartNumber": number, "ETag": str(sent["ETag"])})

    def commit(self) -> None:
        client = self._store.client
        if self._upload_id is None:
            self._store.call("PutObject", None, client.put_object, Key=self._key, Body=bytes(self._buffer))
            self._buffer.clear()
            return
        if self._buffer:
            self._send_part(bytes(self._buffer))
            self._buffer.clear()
        # boto3 raises for a completion that S3 failed inside a 200 answer, too.
        self._store.call(
            "CompleteMultipartUpload", None, client.complete_multipart_upload,
            Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts},
        )  # fmt: skip

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._store.call(
                    "AbortMultipartUpload", None, self._store.client.abort_multipart_upload,
                    Key=self._key, UploadId=upload_id,
                )  # fmt: skip
            except S3Error:
                pass  # the bucket's lifecycle rule for incomplete uploads is the backstop


class _BodyReader(io.RawIOBase):
    """boto3's streamed object body as a raw binary stream, so io.BufferedReader can read lines or chunks of it."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data: bytes = self._body.read(len(buffer))
        except BotoCoreError as exc:
            raise S3Error(f"S3 read: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
