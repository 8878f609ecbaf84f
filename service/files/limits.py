"""The body size limit with its own, larger ceiling for media uploads (`POST /v1/files`, up to
`MMJOBS_MAX_FILE_BYTES`, 512 MB by default), while batches and the drop-ins keep `MMJOBS_MAX_UPLOAD_BYTES`."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.limits import BodySizeLimit

MEDIA_UPLOAD_PATH = "/v1/files"


class BodySizeLimitWithFiles(BodySizeLimit):
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        large_bytes: int | None = None,
        large_prefixes: tuple[str, ...] = (),
        files_bytes: int | None = None,
    ) -> None:
        super().__init__(app, max_bytes, large_bytes, large_prefixes)
        self.files = BodySizeLimit(app, files_bytes or self.large_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") == MEDIA_UPLOAD_PATH and scope.get("method") == "POST":
            await self.files(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)
