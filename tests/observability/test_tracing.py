"""OpenTelemetry: a job submitted with a W3C traceparent is traced, in the client's trace, through intake, dispatch,
the worker's run and the upstream call; with the SDK's in-memory exporter standing in for OTLP."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.config import SIMULATOR_API_KEY, Settings
from service.db import utcnow
from service.models import Job
from service.observability import tracing
from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from tests.db import redis_url
from tests.workers.runner import run_once
from workers.dispatcher import Dispatcher
from workers.limiter import RateLimiter

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
REDIS_URL = redis_url(12)
BODY = {"model": "MiniMax-M2.7", "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}


@pytest.fixture
def spans(settings: Settings) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(settings.model_copy(update={"otel_enabled": True}), role="test", exporter=exporter)
    yield exporter
    tracing.shutdown()


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()


def dispatch(session: Session, settings: Settings, rclient: redis.Redis) -> list[str]:
    published: list[str] = []
    factory = sessionmaker(bind=session.connection(), expire_on_commit=False, join_transaction_mode="create_savepoint")
    Dispatcher(settings, RateLimiter(rclient, account="test", window_seconds=60), published.append).run(
        factory, now=utcnow()
    )
    session.commit()
    return published


def run(job_id: str, settings: Settings, session_factory: sessionmaker[Session], *, faults: str = "") -> None:
    with running_simulator(SimulatorConfig(latency=0, output_tokens=16, seed=1, faults=faults)) as url:
        run_once(settings.model_copy(update={"minimax_api_key": SIMULATOR_API_KEY, "minimax_base_url": url}),
                 session_factory, job_id)  # fmt: skip


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    finished = exporter.get_finished_spans()
    named = {s.name: s for s in finished}
    assert len(named) == len(finished), [s.name for s in finished]  # one of each
    return named


def test_a_job_is_one_trace_from_intake_to_the_upstream_call(
    spans: InMemorySpanExporter, obs_client: TestClient, auth: dict[str, str], settings: Settings,
    session: Session, session_factory: sessionmaker[Session], rclient: redis.Redis, tenant_id: str,
) -> None:  # fmt: skip
    r = obs_client.post("/v1/jobs", json=BODY, headers={**auth, "traceparent": TRACEPARENT})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert "traceparent" not in r.text  # kept on the row for our processes, never shown
    assert dispatch(session, settings, rclient) == [job_id]
    run(job_id, settings, session_factory)
    assert obs_client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "succeeded"

    named = by_name(spans)
    assert set(named) == {"job.intake", "job.dispatch", "job.run", "upstream.call"}
    intake, dispatched, ran, upstream = (named[n] for n in ("job.intake", "job.dispatch", "job.run", "upstream.call"))
    for span in named.values():
        assert span.context is not None
        assert f"{span.context.trace_id:032x}" == TRACE_ID, span.name  # the client's trace throughout
        assert span.status.status_code != StatusCode.ERROR, span.name
    # The client's span -> intake -> (dispatch, run -> upstream call): the row carried the intake span across.
    assert intake.parent is not None
    assert f"{intake.parent.span_id:016x}" == CLIENT_SPAN
    assert intake.context is not None
    assert dispatched.parent is not None
    assert dispatched.parent.span_id == intake.context.span_id
    assert ran.parent is not None
    assert ran.parent.span_id == intake.context.span_id
    assert ran.context is not None
    assert upstream.parent is not None
    assert upstream.parent.span_id == ran.context.span_id
    stored = session.scalar(select(Job.traceparent).where(Job.id == job_id))
    assert stored == f"00-{TRACE_ID}-{intake.context.span_id:016x}-01"

    for span in (intake, dispatched, ran):
        assert span.attributes is not None
        assert span.attributes["mmjobs.job_id"] == job_id
        assert span.attributes["mmjobs.tenant"] == tenant_id
    for span in (dispatched, ran):
        assert span.attributes is not None
        assert span.attributes["mmjobs.attempt"] == 1
        assert "mmjobs.batch_id" not in span.attributes  # a single job: no batch
    assert ran.attributes is not None
    assert ran.attributes["mmjobs.classification"] == "succeeded"
    assert upstream.attributes is not None
    assert upstream.attributes["gen_ai.request.model"] == "MiniMax-M2.7"
    assert upstream.attributes["gen_ai.usage.output_tokens"] == 16
    # The spans' service names say which process made them.
    assert intake.resource.attributes["service.name"] == "mmjobs-test"


def test_a_failed_upstream_call_is_an_error_span_and_the_retry_is_a_second_attempt_in_the_same_trace(
    spans: InMemorySpanExporter, obs_client: TestClient, auth: dict[str, str], settings: Settings,
    session: Session, session_factory: sessionmaker[Session], rclient: redis.Redis,
) -> None:  # fmt: skip
    r = obs_client.post("/v1/jobs", json=BODY, headers={**auth, "traceparent": TRACEPARENT})
    job_id = r.json()["id"]
    assert dispatch(session, settings, rclient) == [job_id]
    run(job_id, settings, session_factory, faults="500=1")
    named = by_name(spans)
    upstream = named["upstream.call"]
    assert upstream.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in upstream.events)
    ran = named["job.run"]
    assert ran.attributes is not None
    assert ran.attributes["mmjobs.classification"] == "retryable"
    assert ran.context is not None
    assert f"{ran.context.trace_id:032x}" == TRACE_ID

    # The retry, dispatched and run again later, is attempt 2 of the same trace.
    spans.clear()
    session.execute(update(Job).where(Job.id == job_id).values(next_attempt_at=utcnow()))
    session.commit()
    rclient.flushdb()
    assert dispatch(session, settings, rclient) == [job_id]
    run(job_id, settings, session_factory)
    retried = by_name(spans)
    for name in ("job.dispatch", "job.run"):
        span = retried[name]
        assert span.context is not None
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.attributes is not None
        assert span.attributes["mmjobs.attempt"] == 2


def test_batch_requests_carry_their_batch_id(
    spans: InMemorySpanExporter, obs_client: TestClient, auth: dict[str, str], settings: Settings,
    session: Session, session_factory: sessionmaker[Session], rclient: redis.Redis,
) -> None:  # fmt: skip
    r = obs_client.post("/v1/batches", json={"requests": [{"custom_id": "a", **BODY}]}, headers=auth)
    assert r.status_code == 202, r.text
    batch_id = r.json()["id"]
    job_id = session.scalar(select(Job.id).where(Job.batch_id == batch_id))
    assert job_id is not None
    assert dispatch(session, settings, rclient) == [job_id]
    run(job_id, settings, session_factory)
    named = by_name(spans)
    for name in ("job.dispatch", "job.run"):
        attributes = named[name].attributes
        assert attributes is not None
        assert attributes["mmjobs.batch_id"] == batch_id
        assert attributes["mmjobs.job_id"] == job_id


@pytest.mark.parametrize("header", ["garbage", f"00-{'0' * 32}-{CLIENT_SPAN}-01", TRACEPARENT.upper()])
def test_an_invalid_traceparent_starts_a_new_trace_and_is_not_refused(
    spans: InMemorySpanExporter, obs_client: TestClient, auth: dict[str, str], session: Session, header: str
) -> None:
    r = obs_client.post("/v1/jobs", json=BODY, headers={**auth, "traceparent": header})
    assert r.status_code == 202, r.text
    intake = by_name(spans)["job.intake"]
    assert intake.parent is None
    assert intake.context is not None
    assert f"{intake.context.trace_id:032x}" != TRACE_ID
    stored = session.scalar(select(Job.traceparent).where(Job.id == r.json()["id"]))
    context = intake.context
    assert stored == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def test_with_tracing_off_the_clients_traceparent_is_kept_for_the_workers(
    obs_client: TestClient, auth: dict[str, str], session: Session
) -> None:
    """An API without tracing still hands the client's trace to workers that have it on."""
    assert not tracing.enabled()
    r = obs_client.post("/v1/jobs", json=BODY, headers={**auth, "traceparent": TRACEPARENT})
    assert r.status_code == 202, r.text
    assert session.scalar(select(Job.traceparent).where(Job.id == r.json()["id"])) == TRACEPARENT


# Run in a fresh interpreter where the SDK and the exporters cannot be imported, as on an install without the extra
# (opentelemetry-api itself comes with FastAPI).
_WITHOUT_OTEL = """
import importlib.abc, logging, sys

class NoOtel(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoOtel())
logging.basicConfig(level=logging.WARNING, format="%(message)s")

from fastapi.testclient import TestClient
from service.api.app import create_app
from service.config import Settings
from service.observability import tracing

settings = Settings(database_url=sys.argv[1], redis_url=sys.argv[2], otel_enabled=True, log_format="console")
with tracing.span("job.intake", parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") as span:
    span.set("mmjobs.job_id", "job_x")
    assert span.traceparent() is None
app = create_app(settings)
assert not tracing.enabled()
with TestClient(app) as client:
    assert client.get("/readyz").status_code == 200
    assert client.get("/docs").status_code == 200
print("OTEL-FREE OK", any(m.startswith("opentelemetry.sdk") for m in sys.modules))
"""


def test_without_the_extra_everything_works_untraced(database_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OTEL, database_url, REDIS_URL],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OTEL-FREE OK False" in done.stdout, done.stdout
    assert "pip install 'minimax-jobs[otel]'" in done.stdout + done.stderr


_EXPORT = """
from service.config import Settings
from service.observability import tracing

assert tracing.configure(Settings(), role="worker")
with tracing.span("job.run", attributes=tracing.job_attributes(job_id="job_x", tenant="ten_x", attempt=1)):
    pass
tracing.shutdown()
"""


def test_spans_are_exported_over_otlp_to_the_configured_endpoint(tmp_path: Path) -> None:
    """MMJOBS_OTEL_ENABLED and the SDK's standard OTEL_EXPORTER_OTLP_ENDPOINT: a collector there receives the spans
    (OTLP over HTTP, protobuf)."""
    received: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            **os.environ,
            "PYTHONPATH": str(Path(__file__).parents[2]),
            "MMJOBS_OTEL_ENABLED": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        }
        done = subprocess.run(
            [sys.executable, "-c", _EXPORT], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )
    finally:
        server.shutdown()
        thread.join(10)
    assert done.returncode == 0, done.stderr
    assert len(received) == 1, received
    path, content_type, body = received[0]
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "mmjobs-worker"
    (exported,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert exported.name == "job.run"
    attributes = {a.key: a.value for a in exported.attributes}
    assert attributes["mmjobs.job_id"].string_value == "job_x"
    assert attributes["mmjobs.attempt"].int_value == 1
