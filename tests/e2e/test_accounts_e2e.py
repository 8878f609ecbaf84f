"""Two upstream accounts through real processes (issue 17 part 2): two simulators, one account each; the scheduler and
a worker configured with both. One account starts answering 1004 mid-run: it leaves the rotation, no job is lost
or failed, and once it answers again the scheduler's probe brings it back."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import UpstreamAccount
from tests.e2e.conftest import TERMINAL, Stack
from tests.procs import Proc, free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e


class TwoAccounts(Stack):
    """The shared stack with two simulators (accounts `a`, `b`) in place of its one."""

    def _start(self) -> None:
        self.urls = {name: f"http://127.0.0.1:{free_port()}" for name in ("a", "b")}
        self.listing = [{"name": n, "api_key": f"sk-{n}", "base_url": u} for n, u in self.urls.items()]
        self.env |= {"MMJOBS_UPSTREAM_ACCOUNTS": json.dumps(self.listing), "MMJOBS_ACCOUNT_PROBE_SECONDS": "1"}
        self.env.pop("MINIMAX_API_KEY")
        self.sims: dict[str, Proc] = {}
        for name, url in self.urls.items():
            port = url.rsplit(":", 1)[1]
            argv = ["-m", "simulator", "--port", port, "--latency", "0.2", "--api-keys", f"sk-{name}"]
            self.sims[name] = Stack.start(self, f"simulator-{name}", argv)
            wait_http(url + "/healthz", self.sims[name])
        self.sim_url = self.urls["a"]
        super()._start()
        accounts = [UpstreamAccount.model_validate(a) for a in self.listing]
        self.settings = self.settings.model_copy(update={"upstream_accounts": accounts})
        self.client = TestClient(create_app(self.settings))

    def start(self, name: str, argv: list[str]) -> Proc:
        if name == "simulator":  # the shared stack's own: ours already run
            return self.sims["a"]
        return super().start(name, argv)


@pytest.fixture(scope="module")
def two() -> Iterator[TwoAccounts]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-e2e-acct-") as tmp:
        s = TwoAccounts(Path(tmp))
        try:
            yield s
        finally:
            s.close()


def accounts_shown(stack: TwoAccounts) -> dict[str, dict[str, Any]]:
    r = stack.client.get("/v1/limits", headers=stack.auth)
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()["accounts"]}


def test_an_account_answering_1004_mid_run_loses_no_job_and_comes_back(two: TwoAccounts) -> None:
    jobs: dict[str, dict[str, Any]] = {}  # the jobs seen ended

    def ended(subset: list[str]) -> list[dict[str, Any]]:
        """Poll `subset` in order up to the first job still waiting, as a client within the key's own rate limit
        (MMJOBS_KEY_REQUESTS_PER_MINUTE, 1,200) would: 80 GETs every half second got 429 from the API."""
        for job_id in subset:
            if job_id not in jobs:
                if (job := two.job(job_id))["status"] not in TERMINAL:
                    break
                jobs[job_id] = job
        return [jobs[j] for j in subset if j in jobs]

    ids = [two.submit(f"account run {i}") for i in range(40)]
    wait_until(lambda: sum(j["status"] == "succeeded" for j in ended(ids[:10])) >= 5, 60, "a first few jobs",
               interval=0.5)  # fmt: skip
    fail = {"faults": "base_resp=1", "base_resp_code": 1004}
    httpx.post(two.urls["a"] + "/_sim/config", json=fail, timeout=5).raise_for_status()
    try:
        ids += [two.submit(f"after the failure {i}") for i in range(40)]
        wait_until(lambda: not accounts_shown(two)["a"]["in_rotation"], 60, "account a to leave the rotation")
        shown = accounts_shown(two)["a"]
        assert shown["last_error"]["code"] == 1004
        wait_until(lambda: len(ended(ids)) == len(ids), 120, "every job to finish", interval=0.5)
    finally:
        httpx.post(two.urls["a"] + "/_sim/config", json={"faults": ""}, timeout=5).raise_for_status()
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, two.logs()[-3000:]
    bounced = [j for j in jobs.values() if any(a.get("minimax_code") == 1004 for a in j["attempts"])]
    for job in bounced:  # retried on the other account, the refusal not counted against the job
        assert job["attempts"][-1]["classification"] == "succeeded"
        assert job["attempts"][-1]["account"] == "b"
        assert {a["account"] for a in job["attempts"] if a.get("minimax_code") == 1004} == {"a"}
    assert {j["attempts"][-1]["account"] for j in jobs.values()} == {"a", "b"}  # each attempt names its account
    usage = two.client.get("/v1/usage", params={"group_by": "account"}, headers=two.auth).json()
    assert {row["key"] for row in usage["data"]} == {"a", "b"}
    assert sum(row["attempts"] for row in usage["data"]) == usage["total"]["attempts"]
    ledgers = {n: httpx.get(u + "/_sim/ledger", timeout=5).json()["entries"] for n, u in two.urls.items()}
    assert len(ledgers["b"]) >= 40  # b carried the run while a was out
    assert sum(1 for e in ledgers["a"] + ledgers["b"] if e.get("outcome") == "succeeded") >= len(ids)
    # a answers again: the scheduler's probe brings it back into the rotation.
    wait_until(lambda: accounts_shown(two)["a"]["in_rotation"], 60, "account a to come back")
    metrics = two.client.get("/metrics").text
    assert 'mmjobs_upstream_account_in_rotation{account="a"} 1.0' in metrics
    assert 'mmjobs_upstream_account_transitions_total{account="a",to="out"} 1.0' in metrics
