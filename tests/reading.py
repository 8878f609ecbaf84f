"""Reading a batch in tests as the service reads it: its row plus the tallies the scheduler has not folded yet
(service/batches/tally.py), so a test sees the counts a user would, not the row's lagging copy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.batches import tally
from service.db import utcnow
from service.jobs.landing import LANDED, on_terminal
from service.models import Batch, Job


def read_batch(session: Session, batch_id: str) -> Batch:
    session.expire_all()
    batch = session.get_one(Batch, batch_id)
    tally.current(session, [batch])
    return batch


def fold(session: Session) -> None:
    """What the scheduler's next pass does with the tallies: fold them in, end the batches with nothing left."""
    tally.fold(session, now=utcnow())
    session.commit()


def land(session: Session, where: Any, status: str, **values: Any) -> None:
    """Drive the jobs matching `where` to a final state the way the worker or scheduler does (a guarded UPDATE
    and its tally), then fold as the scheduler's next pass does (a batch with nothing left processing ends)."""
    rows = session.execute(
        update(Job).where(where).values(status=status, finished_at=utcnow(), **values).returning(*LANDED)
    ).all()
    on_terminal(session, rows, now=utcnow())
    fold(session)
