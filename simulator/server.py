"""Serving the simulator: ``run`` in the foreground, ``running_simulator`` in a background thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from simulator.app import create_app
from simulator.config import SimulatorConfig
from simulator.errors import SimulatedDisconnect

BACKLOG = 16384


def _is_expected(exc: BaseException | None) -> bool:
    # Dropped on purpose by the midstream fault, or cut off when the server stops with calls still open.
    if isinstance(exc, SimulatedDisconnect | asyncio.CancelledError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_expected(inner) for inner in exc.exceptions)
    return False


class _QuietExpectedErrors(logging.Filter):
    """Drops uvicorn's "Exception in ASGI application" traceback for calls the simulator meant to end."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_expected(record.exc_info[1]))


def _server(
    config: SimulatorConfig | None, host: str, port: int, *, log_level: str, graceful_seconds: float
) -> uvicorn.Server:
    uv_config = uvicorn.Config(
        create_app(config),
        host=host,
        port=port,
        log_level=log_level,
        lifespan="off",
        access_log=log_level == "debug",
        # Hung and long streamed calls would otherwise hold shutdown open for as long as they last.
        timeout_graceful_shutdown=int(graceful_seconds),
        # Thousands of clients connecting at once (issue 17.3: 10,000 slow calls open at a time): uvicorn's
        # default listen backlog of 2048 would drop SYNs in such a burst (the kernel caps it at somaxconn).
        # No limit_concurrency: every open call is one asyncio task, cheap enough to hold 10,000.
        backlog=BACKLOG,
    )
    # Added after uvicorn.Config, which (re)configures uvicorn's loggers when it is built.
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(existing, _QuietExpectedErrors) for existing in logger.filters):
        logger.addFilter(_QuietExpectedErrors())
    return uvicorn.Server(uv_config)


def run(
    config: SimulatorConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8090,
    *,
    log_level: str = "info",
) -> None:
    """Serve the simulator in the foreground until interrupted."""
    _server(config, host, port, log_level=log_level, graceful_seconds=5).run()


@contextmanager
def running_simulator(
    config: SimulatorConfig | None = None, *, startup_timeout: float = 10.0, log_level: str = "warning"
) -> Iterator[str]:
    """Run a simulator on a free 127.0.0.1 port in a background thread; yields its base URL.

    Point the SDKs at ``URL + "/anthropic"`` and ``URL + "/v1"``. Leaving the block stops the server, cutting
    off calls still open after a one-second grace period.
    """
    # Binding here, before the server starts, hands uvicorn a port no other process can take in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _server(config, "127.0.0.1", port, log_level=log_level, graceful_seconds=1)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"simulator-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"simulator did not start on 127.0.0.1:{port}")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        sock.close()
