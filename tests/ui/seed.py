"""Data for the dashboard tests, made the way the service makes it: submitted through the API, then run to an end
by the same guarded transitions a worker uses (attempt rows, ledger rows, batch counts, and the webhook deliveries
that outbox.emit writes in those transitions). Only what time alone would do (usage on earlier days) is written to
the database directly."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import utcnow
from service.jobs import transitions
from service.models import Job, Tenant, UsageEntry
from service.pricing import PriceTable
from service.tenants import service as tenants
from tests.reading import fold

RESULT_TEXT = "The contract renews on 1 March 2027 unless either party objects in writing."
FAILED_MESSAGE = "invalid params: messages[0].content is empty (2013)"


@dataclass
class Seed:
    key: str
    tenant_id: str
    jobs: dict[str, str] = field(default_factory=dict)
    batches: dict[str, str] = field(default_factory=dict)


def body(text: str, model: str = "MiniMax-M2.7", **extra: Any) -> dict[str, Any]:
    return {"model": model, "params": {"max_tokens": 400, "messages": [{"role": "user", "content": text}]}, **extra}


def request(i: int, model: str = "MiniMax-M2.7") -> dict[str, Any]:
    return {"custom_id": f"doc-{i}", **body(f"Summarize document {i}", model)}


def _result(text: str, usage: dict[str, int]) -> dict[str, Any]:
    raw = {
        "id": "msg_seed",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    return {
        "content": raw["content"],
        "text": text,
        "stop_reason": "end_turn",
        "usage": usage,
        "upstream_request_id": "req_seed",
        "raw": raw,
    }


def run(
    factory: sessionmaker[Session],
    job_id: str,
    *,
    text: str | None = None,
    error: str | None = None,
    retry: bool = False,
    tokens: tuple[int, int] = (1200, 340),
) -> None:
    """One attempt of `job_id`, as a worker makes it: success with `text`, or failure with `error` (retried later
    when `retry`)."""
    usage = {"input_tokens": tokens[0], "output_tokens": tokens[1], "cache_read_tokens": 0, "cache_write_tokens": 0}
    with factory() as session:
        claim = transitions.claim(session, job_id=job_id, owner="ui-test", lease_seconds=60)
        assert claim is not None, job_id
        if text is not None:
            outcome = transitions.Outcome(
                classification="succeeded", http_status=200, usage=usage, result=_result(text, usage)
            )
        else:
            outcome = transitions.Outcome(
                classification="retryable" if retry else "permanent",
                http_status=500 if retry else 400,
                minimax_code=1000 if retry else 2013,
                error_type="api_error" if retry else "invalid_request_error",
                error_message=error,
                usage=usage if retry else {},
                retry_at=utcnow() + timedelta(minutes=10) if retry else None,
                retry_note="retried in 10 minutes" if retry else "not retried: the request itself is invalid",
            )
        transitions.finish(session, claim=claim, outcome=outcome, prices=PriceTable())
        session.commit()
        fold(session)  # the scheduler's next pass: the batch's tallies folded, a batch with nothing left ends


def batch_job(factory: sessionmaker[Session], batch_id: str, custom_id: str) -> str:
    with factory() as session:
        return session.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.custom_id == custom_id)).one()


def seed(base_url: str, factory: sessionmaker[Session], hook_url: str) -> Seed:
    with factory() as session:
        key = tenants.create_key(session, tenant_name="acme").secret
        session.commit()
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        # A capped tenant, so the limits page has the tenant's own use to show.
        tenant.rpm_limit, tenant.concurrency_limit = 120, 8
        out = Seed(key=key, tenant_id=tenant.id)
        session.commit()
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as api:

        def post(path: str, payload: dict[str, Any]) -> dict[str, Any]:
            r = api.post(path, json=payload)
            assert r.status_code in (201, 202), r.text
            answer: dict[str, Any] = r.json()
            return answer

        post("/v1/webhook-endpoints", {"url": hook_url, "description": "ui test receiver"})
        jobs = {
            "succeeded": body("Summarize contract 17", metadata={"doc": "contract-17"}),
            "failed": body(""),
            "retrying": body("Summarize contract 18"),
            "queued": body("Summarize contract 19", priority=5),
            "live": body("Summarize contract 20"),
            "m3": body("Describe the diagram", model="MiniMax-M3"),
        }
        for name, payload in jobs.items():
            out.jobs[name] = post("/v1/jobs", payload)["id"]
        out.batches["partial"] = post("/v1/batches", {"requests": [request(i) for i in range(4)]})["id"]
        ended_body = {"requests": [request(i) for i in range(3)], "metadata": {"run": "7"}}
        out.batches["ended"] = post("/v1/batches", ended_body)["id"]
        out.batches["cancel"] = post("/v1/batches", {"requests": [request(i) for i in range(3)]})["id"]

    run(factory, out.jobs["succeeded"], text=RESULT_TEXT)
    run(factory, out.jobs["failed"], error=FAILED_MESSAGE)
    run(factory, out.jobs["retrying"], error="upstream overloaded", retry=True)
    run(factory, out.jobs["m3"], text="A flow chart with three steps.", tokens=(5000, 800))
    partial, ended = out.batches["partial"], out.batches["ended"]
    run(factory, batch_job(factory, partial, "doc-0"), text="Document 0 is a lease.")
    run(factory, batch_job(factory, partial, "doc-1"), error=FAILED_MESSAGE)
    for i in range(2):
        run(factory, batch_job(factory, ended, f"doc-{i}"), text=f"Summary of document {i}.", tokens=(900, 120 + i))
    run(factory, batch_job(factory, ended, "doc-2"), error=FAILED_MESSAGE)

    with factory() as session:
        # Spread the ledger over earlier days so the charts have a history.
        entries = session.scalars(select(UsageEntry).order_by(UsageEntry.id)).all()
        for days_ago, entry in zip((3, 1, 1, 0), entries, strict=False):
            moved = entry.at - timedelta(days=days_ago)
            session.execute(update(UsageEntry).where(UsageEntry.id == entry.id).values(at=moved))
        session.commit()
    return out
