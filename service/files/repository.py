"""File queries."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from service.models import File


def add(session: Session, file: File) -> None:
    session.add(file)
    session.flush()


def get(session: Session, *, tenant_id: str, file_id: str) -> File | None:
    return session.scalars(select(File).where(File.id == file_id, File.tenant_id == tenant_id)).one_or_none()


def remove(session: Session, *, file_id: str) -> None:
    session.execute(delete(File).where(File.id == file_id))


def fresh_minimax_id(session: Session, *, file_id: str, uploaded_after: datetime, account: str) -> str | None:
    """The file's MiniMax id if it was uploaded to `account` after `uploaded_after` (young enough to reuse)."""
    return session.scalar(
        select(File.minimax_file_id).where(
            File.id == file_id,
            File.minimax_file_id.is_not(None),
            File.minimax_uploaded_at > uploaded_after,
            File.minimax_account == account,
        )
    )


def take_upload(
    session: Session, *, file_id: str, uploaded_after: datetime, now: datetime, until: datetime, account: str
) -> bool:
    """Become the one process uploading the file to MiniMax, until `until`: one conditional UPDATE, won only while
    the file has no young MiniMax copy in `account` and no other upload holds it (or that upload's hold ran out).
    A copy in another account is replaced by this one: a job moving between accounts uploads again."""
    won = session.execute(
        update(File)
        .where(
            File.id == file_id,
            or_(
                File.minimax_uploaded_at.is_(None),
                File.minimax_uploaded_at <= uploaded_after,
                File.minimax_account.is_distinct_from(account),
            ),
            or_(File.minimax_upload_until.is_(None), File.minimax_upload_until < now),
        )
        .values(minimax_upload_until=until)
        .returning(File.id)
    ).one_or_none()
    return won is not None


def upload_held_until(session: Session, *, file_id: str) -> datetime | None:
    return session.scalar(select(File.minimax_upload_until).where(File.id == file_id))


def record_upload(session: Session, *, file_id: str, minimax_file_id: str, uploaded_at: datetime, account: str) -> None:
    session.execute(
        update(File)
        .where(File.id == file_id)
        .values(
            minimax_file_id=minimax_file_id,
            minimax_uploaded_at=uploaded_at,
            minimax_account=account,
            minimax_upload_until=None,
        )
    )


def release_upload(session: Session, *, file_id: str) -> None:
    session.execute(update(File).where(File.id == file_id).values(minimax_upload_until=None))
