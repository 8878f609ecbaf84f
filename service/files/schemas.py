from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class MediaFile(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: str
    filename: str
    bytes: int
    sha256: str | None = Field(description="Hex SHA-256 of the bytes as received.")
    media_type: str | None = Field(description="The type the content shows (sniffed, not taken from the name).")
    created_at: datetime
    reference: str = Field(description="What a job's image or video part puts in its url: mmjobs_file://ID.")
    minimax_file_id: str | None = Field(
        description="The copy in MiniMax's Files API, once a job has used the file (MiniMax keeps it 7 days)."
    )
    minimax_uploaded_at: datetime | None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
