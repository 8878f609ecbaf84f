"""A finished call's outcome survives a database that is briefly out of reach (full pool, dropped connection)."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from workers.execution import persist


def test_transient_database_errors_are_waited_out() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sa_exc.TimeoutError("QueuePool limit reached")
        return "written"

    assert persist("record", flaky, give_up_after=10) == "written"
    assert len(calls) == 3


def test_a_bug_is_not_retried() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a database problem")

    with pytest.raises(ValueError, match="not a database"):
        persist("record", broken, give_up_after=10)
    assert calls == [1]


def test_it_gives_up_after_its_deadline() -> None:
    def down() -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(sa_exc.OperationalError):
        persist("record", down, give_up_after=0.5)
