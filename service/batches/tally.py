"""A batch's counts and usage without a hot row (issue 17.1).

Every job of a batch used to move its batch's row in its own terminal transaction: the counts, the usage, the
end check and the progress event. Two workers finishing two requests of one batch then queued on that one row,
lock held until COMMIT, and a 3,000-request batch ran at the speed of one row's lock (about 30 finishes a second).

Now a terminal transition only inserts a tally (`add`): what it adds to which batch. Inserting locks nothing anyone
else waits for. The scheduler folds the tallies into their batch rows once a pass (`fold`): one UPDATE per batch,
and that is where a batch whose `processing` reaches 0 ends and where its `batch.progress` events go out.

A read is exact all the same: `current` reads the batch's row and the tallies not folded yet in one statement
(one snapshot, so a fold committing meanwhile is counted once, never twice or not at all), and sets the sums on
the loaded objects as their committed values (nothing to flush). What a reader may see that it did not before:
`processing` at 0 with the status still `in_progress`, until the next fold (at most `scheduler_interval`, 0.5 s)
ends the batch and sends `batch.ended`.

Lock order (service/db.py): `add` locks nothing. `fold` locks the batch rows in id order and only then deletes
their tallies; it holds no job lock, so it never stands between a job and its batch in anyone's order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.batches import progress as batch_progress
from service.batches.progress import batch_event
from service.models import Batch, BatchStatus, BatchTally
from service.webhooks import outbox

COUNTS = ("succeeded", "errored", "canceled", "expired")
USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cost_usd")
COLUMNS = COUNTS + USAGE
# Batches one fold moves at most; the rest wait for the next pass.
FOLD_BATCHES = 500


def add(session: Session, tallies: Iterable[Mapping[str, Any]]) -> None:
    """Insert tallies ({batch_id, and any of COLUMNS}); ones that add nothing are left out. One statement."""
    rows = [
        {"batch_id": t["batch_id"], **{c: t.get(c) or 0 for c in COLUMNS}}
        for t in tallies
        if any(t.get(c) for c in COLUMNS)
    ]
    if rows:
        session.execute(insert(BatchTally), rows)


_FOLD_SQL = text(
    """
    WITH gone AS (
        DELETE FROM batch_tallies WHERE batch_id = ANY(:ids)
        RETURNING batch_id, succeeded, errored, canceled, expired,
                  input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd
    ),
    sums AS (
        SELECT batch_id, sum(succeeded) AS succeeded, sum(errored) AS errored, sum(canceled) AS canceled,
               sum(expired) AS expired, sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cache_read_tokens) AS cache_read_tokens, sum(cache_write_tokens) AS cache_write_tokens,
               sum(cost_usd) AS cost_usd
        FROM gone GROUP BY batch_id
    )
    UPDATE batches SET
        processing = batches.processing - (sums.succeeded + sums.errored + sums.canceled + sums.expired),
        succeeded = batches.succeeded + sums.succeeded,
        errored = batches.errored + sums.errored,
        canceled = batches.canceled + sums.canceled,
        expired = batches.expired + sums.expired,
        input_tokens = batches.input_tokens + sums.input_tokens,
        output_tokens = batches.output_tokens + sums.output_tokens,
        cache_read_tokens = batches.cache_read_tokens + sums.cache_read_tokens,
        cache_write_tokens = batches.cache_write_tokens + sums.cache_write_tokens,
        cost_usd = batches.cost_usd + sums.cost_usd,
        updated_at = :now
    FROM sums WHERE batches.id = sums.batch_id
    RETURNING batches.id, (sums.succeeded + sums.errored + sums.canceled + sums.expired) AS landed
    """
)


def fold(
    session: Session, *, now: datetime, limit: int = FOLD_BATCHES, batch_ids: Sequence[str] | None = None
) -> list[str]:
    """Fold the tallies of up to `limit` batches (of `batch_ids`, or any) into their rows; end those with nothing
    left processing (one `batch.ended` each) and send the `batch.progress` events due. Returns the ids of the
    batches it ended. Lock order (service/db.py): the batch rows in id order, then their tallies."""
    query = select(BatchTally.batch_id).distinct().limit(limit)
    if batch_ids is not None:
        query = query.where(BatchTally.batch_id.in_(batch_ids))
    pending = session.scalars(query).all()
    if not pending:
        return []
    ids = sorted(pending)
    locked = list(session.scalars(select(Batch.id).where(Batch.id.in_(ids)).order_by(Batch.id).with_for_update()))
    orphans = sorted(set(ids) - set(locked))
    if orphans:  # the batch was deleted: its tallies have nowhere to go
        session.execute(delete(BatchTally).where(BatchTally.batch_id.in_(orphans)))
    if not locked:
        return []
    moved = session.execute(_FOLD_SQL, {"ids": locked, "now": now}).all()
    folded = set(locked)
    for obj in list(session.identity_map.values()):  # loaded copies of these rows are stale now: read them again
        if isinstance(obj, Batch) and obj.id in folded:
            session.expire(obj)
    counted = sorted(r.id for r in moved if r.landed)
    if not counted:
        return []
    ended = session.scalars(
        update(Batch)
        .where(Batch.id.in_(counted), Batch.processing <= 0, Batch.status != BatchStatus.ENDED)
        .values(status=BatchStatus.ENDED, ended_at=now)
        .returning(Batch)
    ).all()
    for batch in ended:
        outbox.emit(
            session, tenant_id=batch.tenant_id, type="batch.ended", data=batch_event(batch),
            webhook_url=batch.webhook_url,
        )  # fmt: skip
    batch_progress.on_counts_moved(session, batch_ids=counted, now=now)
    return [b.id for b in ended]


def current(session: Session, batches: Sequence[Batch]) -> None:
    """Bring loaded batches' counts and usage up to date: their rows plus the tallies not folded yet, read in one
    statement, set as committed values (a flush never writes them back)."""
    if not batches:
        return
    ids = [b.id for b in batches]
    pending = (
        select(BatchTally.batch_id, *(func.sum(getattr(BatchTally, c)).label(c) for c in COLUMNS))
        .where(BatchTally.batch_id.in_(ids))
        .group_by(BatchTally.batch_id)
        .subquery()
    )
    query = (
        select(Batch.id, Batch.processing, *(getattr(Batch, c) for c in COLUMNS), *(pending.c[c] for c in COLUMNS))
        .select_from(Batch)
        .outerjoin(pending, pending.c.batch_id == Batch.id)
        .where(Batch.id.in_(ids))
    )
    by_id = {b.id: b for b in batches}
    for row in session.execute(query):
        batch = by_id[row[0]]
        base = dict(zip(COLUMNS, row[2 : 2 + len(COLUMNS)], strict=True))
        extra = dict(zip(COLUMNS, row[2 + len(COLUMNS) :], strict=True))
        landed = sum(int(extra[c] or 0) for c in COUNTS)
        set_committed_value(batch, "processing", row[1] - landed)
        for c in COLUMNS:
            value = base[c] + (extra[c] or 0)
            set_committed_value(batch, c, Decimal(value) if c == "cost_usd" else int(value))
