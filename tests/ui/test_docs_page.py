"""/docs and /redoc in headless Chromium on a network that reaches only this server: the pages render, and a user
signs in with the Authorize button and calls the API from Swagger UI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect

from tests.ui.conftest import Server

LOCAL_HOSTS = ("127.0.0.1", "localhost")


@pytest.fixture
def offline_page(browser: Browser, ui_server: Server) -> Iterator[tuple[Page, list[str]]]:
    """A tab whose every request to a host other than this server is refused (as on a closed network), with the
    list of what reached the network for another host; the test fails on any script or console error except the
    page's own policy refusing an outside URL before any request is made (ReDoc's Redocly logo)."""
    context = browser.new_context(base_url=ui_server.url, viewport={"width": 1360, "height": 900})
    outside: list[str] = []

    def only_local(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        refused_outside = "Content Security Policy" in message.text and "'https://" in message.text
        if message.type == "error" and not refused_outside:
            errors.append(message.text)

    page.on("console", on_console)
    yield page, outside
    context.close()
    assert errors == [], errors


def test_swagger_ui_renders_offline_and_signs_in(
    offline_page: tuple[Page, list[str]], ui_server: Server, shots: Path
) -> None:
    page, outside = offline_page
    page.goto("/docs")
    expect(page.get_by_role("heading", name="minimax-jobs")).to_be_visible()
    jobs = page.locator("#operations-jobs-list_jobs_v1_jobs_get")
    expect(jobs).to_be_visible()
    expect(page.locator("#operations-jobs-create_job_v1_jobs_post")).to_contain_text("Submit a job")
    assert page.locator(".opblock").count() > 40
    # Every operation that needs a key shows a lock; the health checks do not.
    expect(jobs.locator(".authorization__btn")).to_be_visible()
    expect(page.locator("#operations-health-healthz_healthz_get .authorization__btn")).to_have_count(0)
    page.screenshot(path=shots / "docs-offline.png")

    page.get_by_role("button", name="Authorize").first.click()
    dialog = page.locator(".modal-ux")
    expect(dialog).to_contain_text("(http, Bearer)")
    expect(dialog).to_contain_text("x-api-key")
    bearer = dialog.locator(".auth-container").filter(has_text="(http, Bearer)")
    bearer.locator("input").fill(ui_server.seed.key)
    bearer.get_by_role("button", name="Apply credentials").click()
    expect(bearer.locator("button", has_text="Logout")).to_be_visible()
    page.screenshot(path=shots / "docs-authorized.png")
    dialog.locator(".close-modal").click()
    expect(dialog).to_have_count(0)

    # Try it out: GET /v1/jobs with the key the dialog holds lists the seeded tenant's jobs.
    jobs.locator(".opblock-summary").click()
    jobs.get_by_role("button", name="Try it out").click()
    jobs.get_by_role("button", name="Execute").click()
    status = jobs.locator(".live-responses-table tr.response .response-col_status")
    expect(status).to_have_text("200")
    expect(jobs.locator(".live-responses-table tr.response .response-col_description")).to_contain_text('"data"')
    assert ui_server.seed.jobs, "the seed has jobs to list"
    expect(jobs.locator(".live-responses-table")).to_contain_text(next(iter(ui_server.seed.jobs.values())))
    page.screenshot(path=shots / "docs-try-it-out.png")
    assert outside == []


def test_redoc_renders_offline(offline_page: tuple[Page, list[str]], shots: Path) -> None:
    page, outside = offline_page
    page.goto("/redoc")
    # ReDoc lays out the whole schema before it shows anything: slow on a busy 2-core machine.
    expect(page.get_by_role("heading", name="Submit a job").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("x-api-key").first).to_be_attached()
    page.screenshot(path=shots / "redoc-offline.png")
    assert outside == []
