"""Due times: cron in a timezone, daylight saving time both ways, catch-up plans. Pure functions, any clock."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter

from service.schedules import timing
from service.schedules.timing import Cron, next_after, parse, plan, prev_before

NY = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def due_times(cron: Cron, start: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    moment = next_after(cron, start)
    while moment is not None and moment <= end:
        out.append(moment)
        moment = next_after(cron, moment)
    return out


def reference(cron: Cron, start: datetime, end: datetime) -> list[datetime]:
    """Minute by minute in UTC, from the rules in timing's docstring, without its search."""
    found: set[datetime] = set()
    moment = start.replace(second=0, microsecond=0)
    while moment <= end:
        local = moment.astimezone(cron.zone)
        wall = local.replace(tzinfo=None)
        if croniter.match(cron.expr, wall) and (local.fold == 0 or cron.every_hour):
            found.add(moment)
        moment += timedelta(minutes=1)
    # Wall times the spring-forward gap skips never show up above; they run shifted by the gap.
    wall = start.astimezone(cron.zone).replace(tzinfo=None, second=0, microsecond=0)
    last = end.astimezone(cron.zone).replace(tzinfo=None)
    while wall <= last:
        back = wall.replace(tzinfo=cron.zone).astimezone(UTC).astimezone(cron.zone).replace(tzinfo=None)
        if back != wall and croniter.match(cron.expr, wall):
            found.add(wall.replace(tzinfo=cron.zone, fold=0).astimezone(UTC))
        wall += timedelta(minutes=1)
    return sorted(m for m in found if start < m <= end)


def test_spring_forward_daily_run_happens_once_at_the_shifted_time() -> None:
    cron = parse("30 2 * * *", NY)
    runs = due_times(cron, utc(2026, 3, 7, 12), utc(2026, 3, 9, 12))
    # 02:30 does not exist on 2026-03-08: it runs at 03:30 EDT (07:30Z), the day before and after at 02:30.
    assert runs == [utc(2026, 3, 8, 7, 30), utc(2026, 3, 9, 6, 30)]
    assert runs[0].astimezone(cron.zone).strftime("%H:%M %Z") == "03:30 EDT"


def test_fall_back_daily_run_happens_once() -> None:
    cron = parse("30 1 * * *", NY)
    runs = due_times(cron, utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))
    # 01:30 happens twice on 2026-11-01 (EDT, then EST): it runs at the first one only.
    assert runs == [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)]


def test_hourly_schedules_keep_their_pace_through_both_changes() -> None:
    cron = parse("@hourly", NY)
    assert cron.every_hour
    spring = due_times(cron, utc(2026, 3, 8, 4), utc(2026, 3, 8, 9))
    assert spring == [utc(2026, 3, 8, h) for h in range(5, 10)]  # one per real hour, none twice
    fall = due_times(cron, utc(2026, 11, 1, 3), utc(2026, 11, 1, 9))
    assert fall == [utc(2026, 11, 1, h) for h in range(4, 10)]  # the repeated 01:00 runs too


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        (NY, utc(2026, 3, 8, 3)),
        (NY, utc(2026, 11, 1, 2)),
        ("Europe/London", utc(2026, 3, 29, 0)),
        ("Europe/London", utc(2026, 10, 25, 0)),
        ("Australia/Lord_Howe", utc(2026, 4, 4, 13)),  # a 30-minute shift
        ("Asia/Kolkata", utc(2026, 6, 1, 0)),
    ],
)
@pytest.mark.parametrize("expr", ["* * * * *", "*/20 * * * *", "30 1 * * *", "30 2 * * *", "15,45 0-3 * * *"])
def test_search_matches_a_minute_by_minute_reference(zone: str, start: datetime, expr: str) -> None:
    cron = parse(expr, zone)
    end = start + timedelta(hours=6)
    expected = reference(cron, start, end)
    assert due_times(cron, start, end) == expected
    # Backwards too: each due time's predecessor is the one before it.
    for before, after in itertools.pairwise(expected):
        assert prev_before(cron, after) == before


def test_aliases_and_validation() -> None:
    assert parse("@daily", "UTC").expr == "@daily"
    assert parse("  0   9 * *   1-5 ", "UTC").expr == "0 9 * * 1-5"
    for bad, says in [
        ("0 9 * *", "5 fields"),
        ("0 9 * * * *", "5 fields"),
        ("@often", "unknown alias"),
        ("61 * * * *", "not a valid cron"),
    ]:
        with pytest.raises(timing.TimingError, match=says):
            parse(bad, "UTC")
    for zone in ("Mars/Olympus", "../etc/passwd", "", "/etc/localtime"):
        with pytest.raises(timing.TimingError):
            timing.zone(zone)
    assert next_after(parse("0 0 30 2 *", "UTC"), utc(2026, 1, 1)) is None  # February 30th never comes


def test_initial_respects_start_and_end() -> None:
    cron = parse("0 * * * *", "UTC")
    now = utc(2026, 5, 1, 10, 30)
    assert timing.initial(cron, now=now, start_at=None, end_at=None) == utc(2026, 5, 1, 11)
    assert timing.initial(cron, now=now, start_at=utc(2026, 5, 2, 8), end_at=None) == utc(2026, 5, 2, 8)
    assert timing.initial(cron, now=now, start_at=None, end_at=utc(2026, 5, 1, 10, 59)) is None


def _plan(catchup: str, *, late: timedelta, window: timedelta = timedelta(hours=1)) -> list[tuple[datetime, bool]]:
    cron = parse("*/10 * * * *", "UTC")
    now = utc(2026, 5, 1, 12, 0, 5)
    result = plan(cron, next_run_at=now - late, now=now, catchup=catchup, window=window, end_at=None, limit=100)
    assert result.next_run_at == utc(2026, 5, 1, 12, 10)
    return result.due


def test_on_time_due_times_always_run() -> None:
    for catchup in ("skip", "run_once", "all"):
        assert _plan(catchup, late=timedelta(seconds=5)) == [(utc(2026, 5, 1, 12), False)]


def test_missed_due_times_follow_the_catchup_policy() -> None:
    late = timedelta(hours=2, seconds=5)  # missed 10:00 ... 11:50; 12:00 is on time
    assert _plan("skip", late=late) == [(utc(2026, 5, 1, 12), False)]
    assert _plan("run_once", late=late) == [(utc(2026, 5, 1, 11, 50), True), (utc(2026, 5, 1, 12), False)]
    # `all`, within the one-hour window: 11:10 ... 11:50 (11:00:05 is more than an hour ago).
    assert _plan("all", late=late) == [
        *[(utc(2026, 5, 1, 11, m), True) for m in (10, 20, 30, 40, 50)],
        (utc(2026, 5, 1, 12), False),
    ]
    # A missed time older than the window is not run once either.
    assert _plan("run_once", late=late, window=timedelta(seconds=30)) == [(utc(2026, 5, 1, 12), False)]


def test_plan_stops_at_end_and_limit() -> None:
    cron = parse("* * * * *", "UTC")
    now = utc(2026, 5, 1, 12, 0, 30)
    ended = plan(
        cron, next_run_at=utc(2026, 5, 1, 12), now=now, catchup="all", window=timedelta(hours=1),
        end_at=utc(2026, 5, 1, 11, 59), limit=100,
    )  # fmt: skip
    assert ended.due == []
    assert ended.next_run_at is None
    capped = plan(
        cron, next_run_at=utc(2026, 5, 1, 11), now=now, catchup="all", window=timedelta(hours=2), end_at=None,
        limit=10,
    )  # fmt: skip
    assert [d for d, _ in capped.due] == [utc(2026, 5, 1, 11, m) for m in range(10)]
    assert capped.next_run_at == utc(2026, 5, 1, 11, 10)  # the rest on the next pass
