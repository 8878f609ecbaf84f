"""Usage accounting to the token: a batch run against the simulator with faults, and our ledger equals the
simulator's billing ledger, request for request."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.api.app import create_app
from service.models import UsageEntry
from tests.e2e.conftest import Stack
from tests.procs import wait_until

pytestmark = pytest.mark.e2e


def test_our_ledger_equals_the_simulators_under_faults(stack: Stack) -> None:
    httpx.post(stack.sim_url + "/_sim/reset", timeout=5).raise_for_status()
    faults = "429=0.1,500=0.1,529=0.05,midstream=0.15"
    httpx.post(stack.sim_url + "/_sim/config", json={"faults": faults}, timeout=5).raise_for_status()
    try:
        reqs = [
            {"custom_id": f"ledger-{i}", "model": "MiniMax-M2.7",
             "params": {"max_tokens": 200, "messages": [{"role": "user", "content": f"count me {i} " * (i + 1)}]}}
            for i in range(40)
        ]  # fmt: skip
        # 40 % of attempts fail here: with the default 5 attempts one request in a hundred runs out of them (a third
        # of runs would see one), which is not what this test is about. Ten attempts make that one in ten thousand.
        settings = stack.settings.model_copy(update={"default_max_attempts": 10})
        with TestClient(create_app(settings)) as client:
            r = client.post("/v1/batches", json={"requests": reqs}, headers=stack.auth)
        assert r.status_code == 202, r.text
        bid = r.json()["id"]
        final: dict[str, Any] = {}

        def ended() -> bool:
            final.update(stack.client.get(f"/v1/batches/{bid}", headers=stack.auth).json())
            return bool(final["processing_status"] == "ended")

        wait_until(ended, 120, "the batch to end", interval=0.5)
    finally:
        httpx.post(stack.sim_url + "/_sim/config", json={"faults": ""}, timeout=5).raise_for_status()
    if final["request_counts"]["succeeded"] != 40:  # say which request failed, and why
        lines = stack.client.get(f"/v1/batches/{bid}/results", headers=stack.auth).text.splitlines()
        failed = [line for line in lines if '"succeeded"' not in line]
        raise AssertionError(f"{final['request_counts']}: {failed}")

    billed = {e["request_id"]: e for e in httpx.get(stack.sim_url + "/_sim/ledger", timeout=5).json()["entries"]}
    with stack.session_factory() as session:
        ours = {row.upstream_request_id: row for row in session.scalars(
            select(UsageEntry).where(UsageEntry.batch_id == bid))}  # fmt: skip
    assert set(ours) == set(billed)
    assert any(e["outcome"] != "succeeded" for e in billed.values()), "some billed stream must have broken"
    for request_id, entry in billed.items():
        row = ours[request_id]
        if entry["outcome"] == "succeeded":  # a completed response's usage is taken as given, to the token
            assert not row.estimated
            assert (row.input_tokens, row.output_tokens) == (entry["input_tokens"], entry["output_tokens"]), request_id
        else:
            # A broken stream never told us its input (MiniMax's message_start usage is a placeholder): billed at
            # the intake estimate, which errs high, and flagged; its output is counted from what streamed.
            assert row.estimated, request_id
            assert row.input_tokens >= entry["input_tokens"], request_id
            assert abs(row.output_tokens - entry["output_tokens"]) <= 2, request_id
        assert row.cache_read_tokens == entry["cache_read_input_tokens"]
        assert row.cache_write_tokens == entry["cache_creation_input_tokens"]
    total_cost = sum((r.cost_usd for r in ours.values()), Decimal(0))
    assert total_cost > 0
    usage = stack.client.get("/v1/usage", params={"group_by": "batch"}, headers=stack.auth).json()
    row = next(x for x in usage["data"] if x["key"] == bid)
    assert (
        row["input_tokens"]
        == sum(r.input_tokens for r in ours.values())
        >= sum(e["input_tokens"] for e in billed.values())
    )
    assert row["output_tokens"] == sum(r.output_tokens for r in ours.values())
    assert row["estimated"]["attempts"] == sum(1 for e in billed.values() if e["outcome"] != "succeeded")
    assert Decimal(row["cost_usd"]) == total_cost
    assert Decimal(final["usage"]["cost_usd"]) == total_cost
