"""Group commit for finished calls (issue 17.1): one transaction records the outcomes of several calls.

A call thread whose attempt `transitions.groupable` hands its outcome to the process's Finisher and waits for the
answer. The Finisher's own thread takes whatever has queued up (at most MAX_GROUP), records it with
`transitions.finish_many` in one transaction, and answers every waiting thread. Nothing waits for a group to
fill: an outcome that arrives alone is recorded alone, as before, and groups form only when outcomes arrive faster
than one transaction takes (the thousands-of-calls case the grouping is for). A group that cannot be recorded
whole (a job canceled or handed back meanwhile, an attempt billed already, an error) is rolled back and each of its
outcomes recorded alone by its own call thread, with the same code as an outcome that was never grouped."""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from service.db import transaction
from service.jobs import transitions
from service.jobs.transitions import Claim, Outcome
from service.pricing import PriceTable

log = logging.getLogger(__name__)

# Past a few dozen rows a group saves nothing more per job, and a longer transaction holds its job locks longer.
MAX_GROUP = 32


@dataclass
class _Finished:
    claim: Claim
    outcome: Outcome
    grouped: Future[bool] = field(default_factory=Future)  # True: recorded with its group; False: record it alone


class Finisher:
    """Records groups of outcomes in one transaction each (`transitions.finish_many`), on a thread of its own."""

    def __init__(self, sessions: sessionmaker[Session], prices: PriceTable, *, max_group: int = MAX_GROUP) -> None:
        self._sessions, self._prices, self._max = sessions, prices, max_group
        self._queue: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="finisher", daemon=True)
        self._thread.start()

    def grouped(self, claim: Claim, outcome: Outcome) -> bool:
        """Record the outcome with others that end now; False: it was not recorded, the caller records it alone
        (on its own thread, so that one outcome retrying against a database that is away holds up no other)."""
        item = _Finished(claim, outcome)
        self._queue.put(item)
        return item.grouped.result()

    def _run(self) -> None:
        while True:
            group = [self._queue.get()]
            while len(group) < self._max:
                try:
                    group.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            recorded = len(group) > 1 and self._record(group)
            for item in group:
                item.grouped.set_result(recorded)

    def _record(self, group: list[_Finished]) -> bool:
        try:
            with transaction(self._sessions) as session:
                transitions.finish_many(session, group=[(i.claim, i.outcome) for i in group], prices=self._prices)
        except transitions.NotAllLanded as exc:
            log.info("a group of %d outcomes is recorded one by one: %s", len(group), exc)
        except Exception as exc:
            log.warning("a group of %d outcomes is recorded one by one (%s: %s)", len(group), type(exc).__name__, exc)
        else:
            return True
        return False
