"""The dashboard in headless Chromium against a real API server: what a user sees and clicks."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis
from playwright.sync_api import Page, Route, expect
from sqlalchemy import select

from service import status
from service.models import WebhookDelivery
from tests.ui.conftest import Server, sign_in
from tests.ui.seed import FAILED_MESSAGE, RESULT_TEXT, batch_job, request, run


def test_sign_in_rejects_a_bad_key_and_signs_out(page: Page, ui_server: Server, shots: Path) -> None:
    expect(page.get_by_role("heading", name="minimax-jobs")).to_be_visible()
    page.get_by_label("API key").fill("mmj_not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text("invalid or revoked API key")
    page.screenshot(path=shots / "sign-in-error.png")

    sign_in(page, ui_server.seed.key)
    expect(page.get_by_text("Tenant: acme")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('mmjobs.apiKey')") == ui_server.seed.key
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('mmjobs.apiKey')") is None

    # A key revoked while signed in: the next call answers 401 and the dashboard signs out, saying why.
    page.evaluate("sessionStorage.setItem('mmjobs.apiKey', 'mmj_revoked')")
    page.goto("/ui#/batches")
    expect(page.get_by_role("alert")).to_have_text("Signed out: invalid or revoked API key")
    expect(page.get_by_label("API key")).to_be_visible()


def test_page_and_assets_are_served_with_a_strict_policy(ui_server: Server) -> None:
    with httpx.Client(base_url=ui_server.url, timeout=10) as http:
        page = http.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert http.get("/ui/").headers["location"] == "/ui"
        assert http.get("/").headers["location"] == "/ui"  # the API's bare address opens the dashboard
        script = http.get("/ui/static/js/main.js")
        assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert script.headers["cache-control"] == "no-cache"
        assert http.get("/ui/static/nope.js").status_code == 404
        paths = http.get("/openapi.json").json()["paths"]
        assert "/ui" not in paths
        assert "/" not in paths


def test_jobs_list_filters_and_refreshes_live(signed_in: Page, ui_server: Server, shots: Path) -> None:
    page, jobs = signed_in, ui_server.seed.jobs
    rows = page.locator("tbody tr")
    for job_id in jobs.values():
        expect(page.get_by_role("link", name=job_id)).to_be_visible()
    expect(rows.filter(has_text=jobs["succeeded"])).to_contain_text("doc=contract-17")
    page.screenshot(path=shots / "jobs.png", full_page=True)

    page.get_by_role("checkbox", name="failed").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(jobs["failed"])
    assert "status=failed" in page.url
    page.get_by_role("button", name="Show all").click()
    expect(rows).to_have_count(len(jobs))

    # A worker finishes a job while the list is open: the list shows it without a reload.
    live = rows.filter(has_text=jobs["live"])
    expect(live).to_contain_text("queued")
    run(ui_server.factory, jobs["live"], text="Done while you watched.")
    expect(live).to_contain_text("succeeded")


def test_job_detail_shows_result_attempts_cost_and_why_it_waits(
    signed_in: Page, ui_server: Server, shots: Path
) -> None:
    page, jobs = signed_in, ui_server.seed.jobs
    page.get_by_role("link", name=jobs["succeeded"]).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("succeeded")
    expect(page.get_by_label("Result text")).to_have_text(RESULT_TEXT)
    attempts = page.locator("section", has=page.get_by_role("heading", name="Attempts")).locator("tbody tr")
    expect(attempts).to_have_count(1)
    expect(attempts.first).to_contain_text("succeeded")
    usage = page.locator("section", has=page.get_by_role("heading", name="Usage and cost"))
    expect(usage).to_contain_text("1,200")
    expect(usage).to_contain_text("$0.000768")  # 1,200 in at $0.30/M + 340 out at $1.20/M
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    page.screenshot(path=shots / "job-detail.png", full_page=True)

    page.goto(f"/ui#/jobs/{jobs['retrying']}")
    expect(page.get_by_role("status").filter(has_text="Why it waits")).to_contain_text("try again after a failed")
    expect(page.get_by_text("upstream overloaded").first).to_be_visible()
    page.goto(f"/ui#/jobs/{jobs['queued']}")
    expect(page.get_by_text("Why it waits")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()
    page.goto(f"/ui#/jobs/{jobs['failed']}")
    expect(page.get_by_text(FAILED_MESSAGE).first).to_be_visible()


def test_api_errors_are_shown_as_their_message(signed_in: Page) -> None:
    signed_in.goto("/ui#/jobs/job_missing")
    expect(signed_in.get_by_role("alert")).to_have_text("job 'job_missing' was not found")


def test_batches_progress_and_results_table(signed_in: Page, ui_server: Server, shots: Path) -> None:
    page, batches = signed_in, ui_server.seed.batches
    page.get_by_role("link", name="Batches").click()
    partial = page.locator("tbody tr", has_text=batches["partial"])
    expect(partial).to_contain_text("2 / 4")
    expect(partial).to_contain_text("1 succeeded")
    expect(partial).to_contain_text("1 errored")
    expect(partial.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "2")
    expect(partial.locator("time.eta")).to_be_visible()  # from the rate requests finished at so far
    expect(page.locator("tbody tr", has_text=batches["ended"])).to_contain_text("ended")
    page.screenshot(path=shots / "batches.png", full_page=True)

    page.get_by_role("link", name=batches["ended"]).click()
    expect(page.get_by_text("3 of 3 requests finished")).to_be_visible()
    results = page.locator("table.results tbody tr")
    expect(results).to_have_count(3)
    expect(results.filter(has_text="doc-0")).to_contain_text("Summary of document 0.")
    expect(results.filter(has_text="doc-2")).to_contain_text(FAILED_MESSAGE)
    page.screenshot(path=shots / "batch-results.png", full_page=True)

    page.get_by_label("Show").select_option("errored")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("doc-2")
    expect(page.locator(".results-count")).to_have_text(re.compile(r"^1 line ·"))
    with page.expect_download() as download:
        page.get_by_role("button", name="Download JSONL").click()
    assert download.value.suggested_filename == f"{batches['ended']}-errored.jsonl"
    [line] = Path(download.value.path()).read_text().splitlines()
    assert json.loads(line)["custom_id"] == "doc-2"

    # The progress moves while the page is open.
    page.goto(f"/ui#/batches/{batches['partial']}")
    expect(page.get_by_text("2 of 4 requests finished")).to_be_visible()
    run(ui_server.factory, batch_job(ui_server.factory, batches["partial"], "doc-2"), text="Late answer.")
    expect(page.get_by_text("3 of 4 requests finished")).to_be_visible()
    expect(page.locator("table.results tbody tr")).to_have_count(3)


def test_cancel_a_batch(signed_in: Page, ui_server: Server) -> None:
    page, batch_id = signed_in, ui_server.seed.batches["cancel"]
    page.goto(f"/ui#/batches/{batch_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("in progress")
    page.get_by_role("button", name="Cancel batch").click()
    page.get_by_role("button", name="Yes, cancel batch").click()
    # Nothing was running: every request is canceled at once and the batch ends.
    expect(page.get_by_role("heading", level=1)).to_contain_text("ended")
    expect(page.locator(".stat", has_text="Canceled")).to_contain_text("3")
    expect(page.locator("table.results tbody tr")).to_have_count(3)
    expect(page.get_by_role("button", name="Cancel batch")).to_have_count(0)


def test_usage_and_cost_charts(signed_in: Page, shots: Path) -> None:
    page = signed_in
    page.get_by_role("link", name="Usage").click()
    cost = page.get_by_role("img", name=re.compile("Cost per day"))
    expect(cost).to_be_visible()
    today = datetime.now(UTC).date()
    days = {bar.get_attribute("data-label") for bar in cost.locator("rect.bar").all()}
    assert {str(today), str(today - timedelta(days=1)), str(today - timedelta(days=3))} <= days
    tokens = page.get_by_role("img", name=re.compile("Tokens per day"))
    assert tokens.locator("rect.bar[data-series='Output']").count() >= 3
    by_model = page.get_by_role("img", name=re.compile("Cost by model"))
    assert {b.get_attribute("data-label") for b in by_model.locator("rect.bar").all()} == {"MiniMax-M2.7", "MiniMax-M3"}
    expect(page.get_by_text("No budget is set")).to_be_visible()
    page.screenshot(path=shots / "usage.png", full_page=True)


def test_limits_headroom(signed_in: Page, ui_server: Server, shots: Path) -> None:
    page = signed_in
    page.get_by_role("link", name="Limits").click()
    expect(page.get_by_text("No scheduler has reported")).to_be_visible()

    # What a running scheduler publishes: M2.7 backing off after a 429, a third of its requests used.
    client = redis.Redis.from_url(ui_server.settings.redis_url)
    model = {"effective": {"rpm": 300, "tpm": 12_000_000}, "used": {"requests": 100, "tokens": 600_000}}
    tenant = {"tenant": ui_server.seed.tenant_id, "used": {"requests": 12, "tokens": 9000, "in_flight": 3}}
    doc: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(),
        "models": {"MiniMax-M2.7": model},
        "tenants": {ui_server.seed.tenant_id: tenant},
    }
    status.publish(client, doc)
    try:
        page.reload()
        row = page.get_by_role("row", name=re.compile(r"^MiniMax-M2\.7 "))
        expect(row).to_contain_text("backing off")
        expect(row).to_contain_text("300 of 500")
        expect(row).to_contain_text("67% free")
        expect(page.locator("tbody tr", has_text="Calls in flight")).to_contain_text("3")
        expect(page.locator("tbody tr", has_text="MiniMax-M3")).to_contain_text("200")
        page.screenshot(path=shots / "limits.png", full_page=True)
    finally:
        client.delete(status.STATUS_KEY)
        client.close()


def test_webhook_deliveries_and_redeliver(signed_in: Page, ui_server: Server, shots: Path) -> None:
    page = signed_in
    page.get_by_role("link", name="Webhooks").click()
    rows = page.locator("table.deliveries tbody tr")
    # Written by the transitions that ended the seeded jobs and batches; no scheduler has sent them yet.
    expect(rows.filter(has_text="batch.ended").first).to_contain_text("not sent yet")
    expect(rows.filter(has_text="batch.ended").first).to_contain_text("due now")
    expect(rows.filter(has_text="job.failed")).to_have_count(1)
    with ui_server.factory() as session:
        target = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_type == "job.failed")).one()
    row = rows.filter(has_text=target.id)
    expect(row).to_contain_text("127.0.0.1:9/hooks")
    row.get_by_role("button", name=f"Redeliver {target.id}").click()
    expect(page.get_by_role("status").filter(has_text="Redelivery of")).to_contain_text(f"{target.id} (job.failed)")
    page.screenshot(path=shots / "webhooks.png", full_page=True)
    with ui_server.factory() as session:
        again = session.get(WebhookDelivery, target.id)
        assert again is not None
        assert again.status == "pending"
        assert again.next_attempt_at is not None

    page.get_by_label("Show").select_option("failed")
    expect(page.get_by_text("No failed deliveries.")).to_be_visible()


def test_schedules_with_next_and_latest_runs(signed_in: Page, ui_server: Server, shots: Path) -> None:
    page = signed_in
    body = {
        "name": "Nightly contracts",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "template": {"batch": {"requests": [request(0)]}},
    }
    auth = {"Authorization": f"Bearer {ui_server.seed.key}"}
    with httpx.Client(base_url=ui_server.url, headers=auth, timeout=10) as api:
        created = api.post("/v1/schedules", json=body)
        assert created.status_code == 201, created.text
        schedule = created.json()
        run = api.post(f"/v1/schedules/{schedule['id']}/trigger")
        assert run.status_code == 202, run.text
    page.get_by_role("link", name="Schedules").click()
    row = page.locator("tbody tr", has_text="Nightly contracts")
    expect(row).to_contain_text("0 2 * * * Europe/Paris")
    expect(row).to_contain_text("enabled")
    expect(row.locator(f'time[datetime="{schedule["next_run_at"]}"]')).to_have_text(re.compile(r"^in \d"))
    expect(row.get_by_role("link", name=run.json()["batch_id"])).to_be_visible()
    expect(row).to_contain_text("manual")
    page.screenshot(path=shots / "schedules.png")


def test_schedules_page_on_a_server_without_schedules(signed_in: Page) -> None:
    page = signed_in

    def absent(route: Route) -> None:
        route.fulfill(status=404, json={"error": {"type": "not_found", "message": "Not Found", "field": None}})

    page.route("**/v1/schedules*", absent)
    page.get_by_role("link", name="Schedules").click()
    expect(page.get_by_text("Schedules are not available on this server")).to_be_visible()
    page.get_by_role("link", name="Jobs", exact=True).click()
    expect(page.get_by_role("heading", level=1, name="Jobs")).to_be_visible()
