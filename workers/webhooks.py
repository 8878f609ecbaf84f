"""Webhook delivery: the scheduler publishes due deliveries (`dispatch_due`), a thin task sends one (`deliver`).

The schedule lives in Postgres (DESIGN.md decision 3): each attempt is a row, the next one is computed from the
stored attempt count, and a message the broker lost is published again. A delivery is claimed with a guarded
UPDATE and a short lock before it is sent, so a duplicate task does nothing.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from service import netguard
from service.config import Settings
from service.db import run_in_transaction, transaction, utcnow
from service.models import DeliveryStatus, WebhookAttempt, WebhookEndpoint, WebhookEvent
from service.observability import logging as obs_logging
from service.observability import worker as worker_metrics
from service.webhooks import repository
from service.webhooks.events import ENDPOINT_DISABLED, envelope, new_secret, rfc3339, signed_headers
from service.webhooks.outbox import emit
from service.webhooks.retry import DISABLE_AFTER_SECONDS, MAX_ATTEMPTS, next_delay
from workers.celery_app import QUEUE, app
from workers.runtime import Calls, get_runtime

DELIVER_WEBHOOK = "mmjobs.deliver_webhook"
# A delivery handed to the broker and not finished after this long is published again (the message was lost).
REDISPATCH_AFTER = timedelta(minutes=2)
# How long a worker holds a delivery while sending: past every timeout of one attempt (connect, write, read).
LOCK_FOR = timedelta(minutes=2)
RESPONSE_BODY_BYTES = 2048
log = logging.getLogger(__name__)


def dispatch_due(session: Session, *, now: datetime, publish: Callable[[str], None], limit: int = 200) -> int:
    """Lock due deliveries (FOR UPDATE SKIP LOCKED), publish their ids (task `mmjobs.deliver_webhook`) and mark
    them dispatched; deliveries dispatched long ago and never finished are published again. Returns how many.
    Call it inside a transaction: if publishing fails, the rows roll back to "not dispatched"."""
    ids = repository.due_ids(session, now=now, redispatch_before=now - REDISPATCH_AFTER, limit=limit)
    if not ids:
        return 0
    repository.mark_dispatched(session, delivery_ids=ids, now=now)
    for delivery_id in ids:
        publish(delivery_id)
    return len(ids)


@dataclass(frozen=True, kw_only=True, slots=True)
class Plan:
    """What one attempt sends, read while the delivery is claimed."""

    delivery_id: str
    number: int
    tenant_id: str
    endpoint_id: str | None
    url: str
    msg_id: str
    body: bytes
    secrets: list[str]


@dataclass(frozen=True, kw_only=True, slots=True)
class Answer:
    http_status: int | None
    error: str | None
    latency_ms: int
    body: str | None
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


def deliver(
    factory: sessionmaker[Session],
    delivery_id: str,
    *,
    client: httpx.Client,
    now: datetime | None = None,
    rng: random.Random | None = None,
) -> str:
    """Make one attempt of a due delivery and store it. Returns `delivered`, `retrying`, `failed`, or `skipped`
    (not due, already finished, or another worker holds it). `now` is the scheduling clock (tests move it);
    the signature's timestamp is always the real time."""
    now = now or utcnow()
    with transaction(factory) as session:
        plan = _claim(session, delivery_id, now=now)
    if plan is None:
        return "skipped"
    if isinstance(plan, str):
        return plan
    answer = send(client, plan)
    worker_metrics.observe_webhook(http_status=answer.http_status, seconds=answer.latency_ms / 1000)
    return run_in_transaction(
        factory,
        lambda session: _record(session, plan, answer, now=now + timedelta(milliseconds=answer.latency_ms), rng=rng),
    )


def _claim(session: Session, delivery_id: str, *, now: datetime) -> Plan | str | None:
    delivery = repository.claim(session, delivery_id=delivery_id, now=now, lock_until=now + LOCK_FOR)
    if delivery is None:
        return None
    event = session.get(WebhookEvent, delivery.event_id)
    assert event is not None  # deliveries cascade with their event
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            # Disabled after this delivery was written: it fails unsent. Only this one: the others were failed
            # when the endpoint was disabled, and this transaction already holds this delivery's lock, so taking
            # the endpoint's and its other deliveries' now would break the lock order (service/db.py).
            repository.fail_one(session, delivery_id=delivery.id, error="the endpoint was disabled", now=now)
            return "failed"
        url, secrets = endpoint.url, endpoint.signing_secrets(now)
    else:
        assert delivery.url is not None
        repository.ensure_tenant_secret(session, tenant_id=delivery.tenant_id, secret=new_secret(), now=now)
        tenant_secret = repository.get_tenant_secret(session, tenant_id=delivery.tenant_id)
        assert tenant_secret is not None
        url, secrets = delivery.url, tenant_secret.signing_secrets(now)
    return Plan(
        delivery_id=delivery.id,
        number=delivery.attempt_count + 1,
        tenant_id=delivery.tenant_id,
        endpoint_id=delivery.endpoint_id,
        url=url,
        msg_id=event.id,
        body=envelope(event),
        secrets=secrets,
    )


def send(client: httpx.Client, plan: Plan) -> Answer:
    """POST the signed envelope once. Any non-2xx answer is a failure (3xx included: never followed)."""
    headers = signed_headers(msg_id=plan.msg_id, body=plan.body, signing_secrets=plan.secrets, at=datetime.now(UTC))
    started = time.monotonic()
    deadline = started + (client.timeout.read or 15.0)
    try:
        with client.stream("POST", plan.url, content=plan.body, headers=headers, follow_redirects=False) as response:
            chunks = bytearray()
            for chunk in response.iter_bytes():
                chunks += chunk
                if len(chunks) >= RESPONSE_BODY_BYTES or time.monotonic() > deadline:
                    break
            text = bytes(chunks[:RESPONSE_BODY_BYTES]).decode("utf-8", "replace").replace("\x00", "")
            return Answer(
                http_status=response.status_code,
                error=None,
                latency_ms=_ms_since(started),
                body=text,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
    except netguard.RefusedRequest as exc:
        error = f"refused: {exc}"
    except httpx.TimeoutException as exc:
        error = f"timeout: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return Answer(http_status=None, error=error[:500], latency_ms=_ms_since(started), body=None, retry_after=None)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _record(session: Session, plan: Plan, answer: Answer, *, now: datetime, rng: random.Random | None) -> str:
    values: dict[str, Any] = {"last_attempt_at": now, "updated_at": now}
    if plan.endpoint_id is not None:
        # Lock order (service/db.py): the endpoint before this delivery; its health (and, on 410, every pending
        # delivery of it) is updated below in the same transaction.
        repository.lock_endpoint(session, endpoint_id=plan.endpoint_id)
    disable_reason: str | None = None
    if answer.ok:
        outcome = DeliveryStatus.DELIVERED
        values |= {"status": outcome, "delivered_at": now, "next_attempt_at": None, "error": None}
    elif answer.http_status == 410:
        outcome = DeliveryStatus.FAILED
        values |= {"status": outcome, "next_attempt_at": None, "error": "the receiver answered 410 Gone"}
        disable_reason = "the endpoint answered 410 Gone"
    else:
        delay = next_delay(plan.number, retry_after=answer.retry_after, rng=rng)
        if delay is None:
            outcome = DeliveryStatus.FAILED
            values |= {"status": outcome, "next_attempt_at": None, "error": f"gave up after {MAX_ATTEMPTS} attempts"}
        else:
            outcome = DeliveryStatus.PENDING
            values |= {"status": outcome, "next_attempt_at": now + timedelta(seconds=delay)}
    if not repository.finish_attempt(session, delivery_id=plan.delivery_id, number=plan.number, values=values):
        # Another worker recorded this attempt after our lock ran out, or the delivery was deleted.
        log.warning("webhook delivery %s attempt %d was recorded elsewhere", plan.delivery_id, plan.number)
        return "skipped"
    repository.add_all(
        session,
        [
            WebhookAttempt(
                delivery_id=plan.delivery_id,
                number=plan.number,
                at=now - timedelta(milliseconds=answer.latency_ms),
                url=plan.url,
                http_status=answer.http_status,
                error=answer.error,
                latency_ms=answer.latency_ms,
                response_body=answer.body,
            )
        ],
    )
    if plan.endpoint_id is not None and _endpoint_health(
        session, plan, ok=answer.ok, disable_reason=disable_reason, now=now
    ):
        outcome = DeliveryStatus.FAILED  # with every other pending delivery of the endpoint
    return "retrying" if outcome == DeliveryStatus.PENDING else str(outcome)


def _endpoint_health(session: Session, plan: Plan, *, ok: bool, disable_reason: str | None, now: datetime) -> bool:
    """Success clears the failure run; 410, or failures without a break for 5 days, disable the endpoint and
    the tenant is told on its other endpoints. True when this attempt disabled it."""
    assert plan.endpoint_id is not None
    if ok:
        repository.note_success(session, endpoint_id=plan.endpoint_id)
        return False
    failing_since = repository.note_failure(session, endpoint_id=plan.endpoint_id, now=now)
    if disable_reason is None and failing_since is not None:
        if (now - failing_since).total_seconds() >= DISABLE_AFTER_SECONDS:
            disable_reason = f"every delivery has failed since {rfc3339(failing_since)} (5 days)"
    if disable_reason is None:
        return False
    if not repository.disable_endpoint(session, endpoint_id=plan.endpoint_id, reason=disable_reason, now=now):
        return False
    endpoint = session.get(WebhookEndpoint, plan.endpoint_id, populate_existing=True)
    assert endpoint is not None
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, disable_reason)
    emit(
        session,
        tenant_id=plan.tenant_id,
        type=ENDPOINT_DISABLED,
        data={
            "id": endpoint.id,
            "object": "webhook_endpoint",
            "url": endpoint.url,
            "enabled": False,
            "disabled_reason": endpoint.disabled_reason,
            "disabled_at": endpoint.disabled_at,
        },
    )
    return True


# The Celery side: one guarded client per worker process (STYLE.md practice 5).

_client: httpx.Client | None = None
_client_lock = threading.Lock()


def http_client(settings: Settings) -> httpx.Client:
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = netguard.guarded_client(
                    allow_loopback=settings.webhook_allow_loopback, timeout=settings.webhook_timeout_seconds
                )
    return _client


@app.task(name=DELIVER_WEBHOOK, ignore_result=True)
def deliver_webhook_task(delivery_id: str) -> None:
    """On a call thread (workers/runtime.py `Calls`), never on the receiver: a worker has only a few receivers,
    and an endpoint that takes the whole timeout (15 s) to answer must not hold one. With no call thread free
    within a moment the delivery is passed on to another worker (or back to this one later); a pass-on lost with
    Redis is published again by the scheduler (`dispatch_due`)."""
    rt = get_runtime()
    if not rt.calls.reserve(1, wait=Calls.WAIT_SECONDS):
        try:
            publisher(app)(delivery_id)
        except Exception as exc:
            log.warning(
                "could not pass on webhook delivery %s (%s); the scheduler publishes it again", delivery_id, exc
            )
        return
    rt.calls.start(partial(_deliver_now, delivery_id, rt))


def _deliver_now(delivery_id: str, rt: Any) -> None:
    obs_logging.new_context(delivery_id=delivery_id)
    deliver(rt.session_factory, delivery_id, client=http_client(rt.settings))


def publisher(celery: Celery) -> Callable[[str], None]:
    """The `publish` argument of `dispatch_due` for a Celery app (the scheduler's)."""

    def publish(delivery_id: str) -> None:
        celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=QUEUE)

    return publish
