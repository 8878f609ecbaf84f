"""File queries."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.models import File


def add(session: Session, file: File) -> None:
    session.add(file)
    session.flush()


def get(session: Session, *, tenant_id: str, file_id: str) -> File | None:
    return session.scalars(select(File).where(File.id == file_id, File.tenant_id == tenant_id)).one_or_none()


def remove(session: Session, *, file_id: str) -> None:
    session.execute(delete(File).where(File.id == file_id))
