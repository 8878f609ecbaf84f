"""Media-related job writes the worker makes before a call."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.models import Job


def record_counted_tokens(session: Session, *, job_id: str, tokens: int) -> None:
    """Keep MiniMax's own input-token count on the job (shown beside the intake estimate)."""
    session.execute(update(Job).where(Job.id == job_id).values(counted_input_tokens=tokens))
