"""OpenTelemetry traces of a job: intake -> dispatch -> claim and run -> the upstream call, one trace per job.

Optional: `pip install 'minimax-jobs[otel]'` and `MMJOBS_OTEL_ENABLED=true`. Spans go over OTLP to wherever the
SDK's own variables point (`OTEL_EXPORTER_OTLP_ENDPOINT`, `..._TRACES_ENDPOINT`, `..._HEADERS`). Without the extra,
or with tracing off, `span()` is a no-op: this is the only module that imports OpenTelemetry, and only once asked to.

A Celery message carries the job id and nothing else (DESIGN.md decision 1), so the trace travels in the job's row:
the intake stores its span's W3C `traceparent` in `jobs.traceparent`, and the scheduler and the worker start their
spans from it. A client that sends `traceparent` gets the whole job inside its own trace.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

from service.config import Settings

log = logging.getLogger(__name__)

AttributeValue = str | int | float | bool
# W3C Trace Context, version 00: lowercase hex; an all-zero trace id or parent id is invalid.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

_lock = threading.Lock()
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider once configured
_tracer: Any = None


class Span(Protocol):
    def set(self, key: str, value: AttributeValue | None) -> None: ...

    def traceparent(self) -> str | None:
        """This span as a W3C traceparent, for work that continues the trace elsewhere (None: not tracing)."""
        ...


class _NoSpan:
    def set(self, key: str, value: AttributeValue | None) -> None:
        pass

    def traceparent(self) -> str | None:
        return None


class _OtelSpan:
    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def traceparent(self) -> str | None:
        ctx = self._span.get_span_context()
        return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


_NO_SPAN = _NoSpan()


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a valid W3C traceparent, else None. An invalid one is ignored, not refused: the W3C spec
    says to start a new trace, and a client's tracing middleware must never make its requests fail."""
    if value is None:
        return None
    value = value.strip()
    return value if _TRACEPARENT.fullmatch(value) else None


def job_attributes(
    *, job_id: str, tenant: str | None = None, batch_id: str | None = None, attempt: int | None = None
) -> dict[str, AttributeValue | None]:
    """The ids every job span carries (the same ones every log line of an attempt carries)."""
    return {"mmjobs.job_id": job_id, "mmjobs.tenant": tenant, "mmjobs.batch_id": batch_id, "mmjobs.attempt": attempt}


def enabled() -> bool:
    return _tracer is not None


def configure(settings: Settings, *, role: str, exporter: Any = None) -> bool:
    """Start exporting this process's spans (`role`: api, worker or scheduler, shown as service `mmjobs-ROLE`).

    `exporter` replaces OTLP (tests pass the SDK's InMemorySpanExporter; spans are then exported as they end).
    Returns whether tracing is on. Calling it again replaces the previous setup, flushing what it held."""
    global _provider, _tracer
    if not settings.otel_enabled:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        log.warning(
            "MMJOBS_OTEL_ENABLED is set but OpenTelemetry is not installed (pip install 'minimax-jobs[otel]'): "
            "tracing is off"
        )
        return False
    resource = Resource.create(
        {"service.name": f"{settings.otel_service_name}-{role}", "service.namespace": settings.otel_service_name}
    )
    provider = TracerProvider(resource=resource)
    if exporter is None:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(settings)))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    with _lock:
        previous, _provider, _tracer = _provider, provider, provider.get_tracer("mmjobs")
    if previous is not None:
        previous.shutdown()
    return True


def shutdown() -> None:
    """Export what is buffered and stop tracing (a process that exits; tests)."""
    global _provider, _tracer
    with _lock:
        previous, _provider, _tracer = _provider, None, None
    if previous is not None:
        previous.shutdown()


def _otlp_exporter(settings: Settings) -> Any:
    # Both exporters read the endpoint, headers, timeout and TLS settings from the standard OTEL_EXPORTER_OTLP_*
    # variables themselves.
    if settings.otel_exporter_otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


@contextmanager
def span(
    name: str, *, parent: str | None = None, attributes: Mapping[str, AttributeValue | None] | None = None
) -> Iterator[Span]:
    """A span around the block, child of `parent` (a stored traceparent) or else of the current span. An exception
    leaving the block is recorded on it and marks it as an error. A no-op when tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield _NO_SPAN
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    values = {k: v for k, v in (attributes or {}).items() if v is not None}
    with tracer.start_as_current_span(name, context=context, attributes=values) as current:
        yield _OtelSpan(current)
