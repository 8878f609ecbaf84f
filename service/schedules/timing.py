"""When a schedule is due: a 5-field cron expression (or @hourly, @daily, ...) read as wall-clock time in the
schedule's IANA timezone.

Daylight saving time follows the zone:
- a wall time the spring-forward gap skips (02:30 on a New York spring day) runs once, shifted forward by the
  gap (03:30 EDT); a shifted time that lands on another due time is the same run;
- a wall time the fall-back repeats (01:30 on a New York autumn day) runs once, at its first occurrence, unless
  the expression runs every hour (hour field `*`): such a schedule keeps its pace through the repeated hour, as
  Vixie cron does.

Due times are UTC instants; the functions here are pure, so tests pass any clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter

from service.models import Catchup

ALIASES = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight")
# Wider than any DST shift: a due time's wall clock and its UTC instant are never further apart than this.
MARGIN = timedelta(hours=3)
# The fast path trusts an interval this short to hold at most one offset change.
SHORT = timedelta(hours=6)
# A due time found later than this is missed: the catch-up policy decides whether it still runs.
LATE_AFTER = timedelta(seconds=60)
_TICK = timedelta(microseconds=1)


class TimingError(ValueError):
    """A cron expression or timezone we cannot use; the message says why."""


@dataclass(frozen=True, slots=True)
class Cron:
    expr: str
    zone: ZoneInfo
    every_hour: bool


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name` (e.g. Europe/Paris), or TimingError."""
    if not name or name != name.strip() or name.startswith("/") or ".." in name:
        raise TimingError(f"{name!r} is not an IANA timezone such as Europe/Paris or UTC")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise TimingError(f"unknown timezone {name!r}; use an IANA name such as America/New_York or UTC") from None


def parse(expr: str, timezone: str) -> Cron:
    """Check the expression (5 fields, or one of the @ aliases) and the zone; TimingError says what is wrong."""
    text = " ".join(expr.split())
    if text.startswith("@"):
        if text.lower() not in ALIASES:
            raise TimingError(f"{expr!r}: unknown alias; use one of {', '.join(ALIASES)}")
        text = text.lower()
    elif len(text.split(" ")) != 5:
        raise TimingError(f"{expr!r}: write 5 fields (minute hour day-of-month month day-of-week), e.g. '0 9 * * 1-5'")
    try:
        hours = croniter(text, datetime(2000, 1, 1)).expanded[1]
    except (CroniterError, ValueError, KeyError, IndexError) as exc:
        raise TimingError(f"{expr!r} is not a valid cron expression ({exc})") from None
    every_hour = hours == ["*"] or len(set(hours)) == 24  # "*" or each of 0-23
    return Cron(expr=text, zone=zone(timezone), every_hour=every_hour)


def _wall(cron: Cron, moment: datetime) -> datetime:
    return moment.astimezone(cron.zone).replace(tzinfo=None)


def _instants(cron: Cron, naive: datetime) -> list[datetime]:
    """The UTC instants at which the wall time `naive` is due (none, one, or two in a repeated hour)."""
    first = naive.replace(tzinfo=cron.zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=cron.zone, fold=1).astimezone(UTC)
    if first >= second:
        # The same instant, or a time in the spring-forward gap: fold=0 reads it with the offset before the
        # change, which is the wall time shifted forward by the gap.
        return [first]
    # A repeated (fall-back) wall time: first occurrence only, unless the schedule runs every hour.
    return [first, second] if cron.every_hour else [first]


def _walk(cron: Cron, start: datetime, *, backwards: bool = False) -> Iterator[datetime]:
    it = croniter(cron.expr, start)
    try:
        while True:
            yield it.get_prev(datetime) if backwards else it.get_next(datetime)
    except CroniterBadDateError:
        return


def _same_offset(cron: Cron, a: datetime, b: datetime) -> bool:
    return abs(b - a) <= SHORT and a.astimezone(cron.zone).utcoffset() == b.astimezone(cron.zone).utcoffset()


def next_after(cron: Cron, after: datetime) -> datetime | None:
    """The first due time strictly after `after`; None if the expression never fires again."""
    wall = _wall(cron, after)
    # Fast path: with no offset change between `after` and the next matching wall time, that time is the answer.
    for naive in _walk(cron, wall):
        later = [i for i in _instants(cron, naive) if i > after]
        if later and _same_offset(cron, after, later[0]):
            return later[0]
        break
    # Around an offset change wall times and instants can come out of order: look at every wall time that could
    # map to an instant after `after`, until one too late to beat the best found.
    best: datetime | None = None
    for naive in _walk(cron, wall - MARGIN):
        if best is not None and naive > _wall(cron, best) + MARGIN:
            break
        for instant in _instants(cron, naive):
            if instant > after and (best is None or instant < best):
                best = instant
    return best


def prev_before(cron: Cron, before: datetime) -> datetime | None:
    """The last due time strictly before `before`; None if there is none."""
    wall = _wall(cron, before)
    for naive in _walk(cron, wall, backwards=True):
        earlier = [i for i in _instants(cron, naive) if i < before]
        if earlier and _same_offset(cron, earlier[-1], before):
            return earlier[-1]
        break
    best: datetime | None = None
    for naive in _walk(cron, wall + MARGIN, backwards=True):
        if best is not None and naive < _wall(cron, best) - MARGIN:
            break
        for instant in _instants(cron, naive):
            if instant < before and (best is None or instant > best):
                best = instant
    return best


def first_from(cron: Cron, moment: datetime) -> datetime | None:
    """The first due time at or after `moment`."""
    return next_after(cron, moment - _TICK)


def initial(cron: Cron, *, now: datetime, start_at: datetime | None, end_at: datetime | None) -> datetime | None:
    """The next due time for a schedule (re)started at `now`: after now, not before start_at, not after end_at."""
    due = first_from(cron, start_at) if start_at is not None and start_at > now else next_after(cron, now)
    return due if due is not None and (end_at is None or due <= end_at) else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    due: list[tuple[datetime, bool]]  # (due time, late: run as a catch-up)
    next_run_at: datetime | None


def plan(
    cron: Cron,
    *,
    next_run_at: datetime,
    now: datetime,
    catchup: str,
    window: timedelta,
    end_at: datetime | None,
    limit: int,
) -> Plan:
    """The due times to handle now, oldest first, and the next one after them.

    Due times up to LATE_AFTER old are on time and always handled. Older ones were missed (no scheduler ran):
    `skip` drops them, `run_once` handles the latest one within `window`, `all` every one within `window`
    (`limit` at a time; the rest on the next pass).
    """
    due: list[tuple[datetime, bool]] = []
    cursor: datetime | None = next_run_at
    late_before = now - LATE_AFTER
    if next_run_at < late_before:
        floor = now - window
        if catchup == Catchup.ALL:
            if cursor is not None and cursor < floor:
                cursor = first_from(cron, floor)
            while cursor is not None and cursor < late_before and len(due) < limit:
                due.append((cursor, True))
                cursor = next_after(cron, cursor)
        else:
            if catchup == Catchup.RUN_ONCE:
                latest = prev_before(cron, late_before)
                if latest is not None and latest >= max(floor, next_run_at):
                    due.append((latest, True))
            cursor = first_from(cron, late_before)
    while cursor is not None and cursor <= now and len(due) < limit:
        due.append((cursor, False))
        cursor = next_after(cron, cursor)
    if end_at is not None:
        due = [(d, late) for d, late in due if d <= end_at]
        if cursor is not None and cursor > end_at:
            cursor = None
    return Plan(due=due, next_run_at=cursor)
