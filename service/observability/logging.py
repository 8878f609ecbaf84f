"""Structured logs: structlog and the standard library configured once per process, one line per record.

Every process (API, worker, scheduler) calls `configure` at start. Our code keeps using `logging.getLogger`;
records from it, from structlog loggers and from libraries (uvicorn, Celery, httpx) all go through one root
handler and one processor chain, so every line has the same shape: JSON by default (`MMJOBS_LOG_FORMAT=json`),
or readable lines (`console`). Values bound with `bind` / `new_context` (contextvars: a Celery thread or a request
has its own) are added to every line, so each line of an attempt carries job_id, batch_id, tenant and attempt.

Secrets never reach the output: `redact` runs last before rendering, on the message, the bound values and the
formatted traceback alike.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from service.config import Settings

REDACTED = "[REDACTED]"
# Keys whose values are secrets whatever they look like (compared lower-cased, `-` read as `_`).
SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "x_api_key",
        "api_key",
        "apikey",
        "minimax_api_key",
        "secret",
        "client_secret",
        "signing_secret",
        "signing_secrets",
        "previous_secret",
        "password",
        "token",
        "access_token",
        "refresh_token",
        "metrics_token",
        "cookie",
        "set_cookie",
    }
)
SECRET_KEY_SUFFIXES = ("_secret", "_password", "_api_key")
# Secrets recognised by their shape anywhere in a string: our API keys, Standard Webhooks secrets, `sk-` keys,
# JWTs (MiniMax keys are JWTs) and whatever follows `Bearer`.
SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(mmj_)[A-Za-z0-9_\-]{6,}"), r"\1" + REDACTED),
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=_\-]{6,}"), r"\1" + REDACTED),
    (re.compile(r"\b(sk-)[A-Za-z0-9_\-]{6,}"), r"\1" + REDACTED),
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{6,}"), r"\1" + REDACTED),
)
CHATTY_LOGGERS = ("httpx", "celery.worker.strategy", "celery.app.trace")
# The attribute that marks the root handler `configure` installed, so a second call replaces it.
_HANDLER_MARK = "_mmjobs_handler"


def redact_text(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    normalized = key.lower().replace("-", "_")
    return normalized in SECRET_KEYS or normalized.endswith(SECRET_KEY_SUFFIXES)


def redact_value(value: Any, depth: int = 0) -> Any:
    """`value` with every secret-looking string masked and every secret-named key's value replaced."""
    if isinstance(value, str):
        return redact_text(value)
    if depth > 8:  # a pathological nesting is not worth the time; its strings are still in the rendered line
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret_key(k) else redact_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v, depth + 1) for v in value]
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the last word before rendering."""
    return {k: REDACTED if _is_secret_key(k) else redact_value(v) for k, v in event_dict.items()}


def _drop_formatting_leftovers(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Record attributes that are not `extra=` values: set by another handler's formatter (`message`,
    `asctime`) or duplicates of the event (uvicorn's `color_message`)."""
    for key in ("message", "asctime", "color_message"):
        event_dict.pop(key, None)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_formatting_leftovers,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(log_format: str) -> structlog.stdlib.ProcessorFormatter:
    renderer: Processor = (
        structlog.processors.JSONRenderer(default=str)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become a string before redaction, so a secret in an exception message is masked too.
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )


def configure(settings: Settings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Route every log record of this process through structlog to `stream` (stderr). Safe to call again: it
    replaces the handler it installed before and leaves other handlers (pytest's, for one) alone."""
    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter(settings.log_format))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    # uvicorn's own handlers would print its lines a second time, unstructured; our request log replaces its
    # access log (it adds the tenant and the duration).
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    # One line per attempt is ours ("job ... attempt N: succeeded", with the ids); the libraries' own line per
    # HTTP call and per Celery task say the same again and cost the worker measurable CPU at 1,000 calls in
    # flight. They come back with MMJOBS_LOG_LEVEL=DEBUG.
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)
    return handler


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def new_context(**values: Any) -> None:
    """Start a fresh log context for this thread or task (a pool thread runs many tasks): clear, then bind."""
    structlog.contextvars.clear_contextvars()
    bind(**values)


def bind(**values: Any) -> None:
    """Add values to every later log line of this context; None values are left out."""
    structlog.contextvars.bind_contextvars(**{k: v for k, v in values.items() if v is not None})


def clear() -> None:
    structlog.contextvars.clear_contextvars()
