"""A real API server on 127.0.0.1 (its own database), seeded through the API, and Debian's Chromium driven by
Playwright. Playwright never downloads a browser here: it launches /usr/bin/chromium (`make browser`)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, expect, sync_playwright
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.config import Settings
from service.db import make_engine, make_session_factory
from tests.db import drop_database, fresh_database, redis_url
from tests.ui.seed import Seed, seed

CHROMIUM = "/usr/bin/chromium"
# As the machine notes say: without the background-networking flags Chromium keeps dialing Google's hosts, which
# this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# One per test process: two runs at once on this machine (a developer's and CI's) must not drop each other's.
DATABASE = f"mmjobs_ui_{os.getpid()}"
REDIS_URL = redis_url(15)
# A port nothing listens on: deliveries are never sent here (no scheduler runs), only listed and redelivered.
HOOK_URL = "http://127.0.0.1:9/hooks"

expect.set_options(timeout=10_000)


@dataclass(frozen=True)
class Server:
    url: str
    settings: Settings
    factory: sessionmaker[Session]
    seed: Seed


@pytest.fixture(scope="package")
def ui_server() -> Iterator[Server]:
    url = fresh_database(DATABASE)
    settings = Settings(database_url=url, redis_url=REDIS_URL, minimax_api_key=None, webhook_allow_loopback=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the API server stopped while starting"
        assert time.monotonic() < deadline, "the API server did not start within 15 s"
        time.sleep(0.05)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    base = f"http://127.0.0.1:{port}"
    try:
        yield Server(url=base, settings=settings, factory=factory, seed=seed(base, factory, HOOK_URL))
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        engine.dispose()
        drop_database(DATABASE)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium) first", pytrace=False)
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="package")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' screenshots go (one folder per run, under pytest's temporary directory)."""
    return tmp_path_factory.mktemp("ui-screenshots")


@pytest.fixture
def page(browser: Browser, ui_server: Server) -> Iterator[Page]:
    """A fresh tab (empty sessionStorage) at the dashboard. Fails the test on any script error or console error
    other than the browser's own note about an API call that answered 4xx."""
    context = browser.new_context(base_url=ui_server.url, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    page.goto("/ui")
    yield page
    context.close()
    assert problems == []


def sign_in(page: Page, key: str) -> None:
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name="Jobs")).to_be_visible()


@pytest.fixture
def signed_in(page: Page, ui_server: Server) -> Page:
    sign_in(page, ui_server.seed.key)
    return page
