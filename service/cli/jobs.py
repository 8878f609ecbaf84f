"""`mmjobs job ...`, `mmjobs limits` and `mmjobs webhooks ...`: single jobs, rate-limit headroom and webhook
deliveries, through the REST API.

A client of the API like `mmjobs batch` (`--api-url`, `--api-key`, or MMJOBS_API_URL / MMJOBS_API_KEY), built on
its `Api` helper: every failure is one line that says the fix, and exit code 1. Ids and data go to stdout, human
messages to stderr, so `ID=$(mmjobs job submit ...)` works; every read command takes `--json` (the API's JSON as is).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from service.cli.batch import (
    DEFAULT_URL,
    Api,
    ApiKey,
    ApiUrl,
    Format,
    _json,
    _pairs,
    err,
    fail,
    json_problem,
    out,
    whole_ids,
)

job_app = typer.Typer(help="Submit single jobs, follow them, list and cancel them.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Webhook endpoints and deliveries (with redeliver).", no_args_is_help=True)
limits_app = typer.Typer(help="Rate-limit headroom per model on the upstream account.", subcommand_metavar="")

AsJson = Annotated[bool, typer.Option("--json", help="The API's JSON, as is.")]
JobId = Annotated[str, typer.Argument(help="The job id (job_...), as `mmjobs job list` shows.")]
TERMINAL = ("succeeded", "failed", "canceled", "expired")
_STATUS_STYLE = {
    "queued": "cyan", "running": "bold cyan", "retrying": "yellow", "succeeded": "green",
    "failed": "red", "canceled": "yellow", "expired": "magenta",
    "pending": "cyan", "delivered": "green",
}  # fmt: skip


class DeliveryStatus(StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


def _jobs_api(url: str | None, key: str | None, read_timeout: float = 60) -> Api:
    return Api(url, key, read_timeout=read_timeout, not_found_hint="see `mmjobs job list`")


def _status(value: str) -> Text:
    return Text(value, style=_STATUS_STYLE.get(value, ""))


def _time(value: str | None) -> str:
    return f"{datetime.fromisoformat(value).astimezone():%Y-%m-%d %H:%M:%S}" if value else ""


def _num(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def _params(prompt: str | None, params_file: Path | None, max_tokens: int | None, system: str | None) -> dict[str, Any]:
    if (prompt is None) == (params_file is None):
        raise fail("give exactly one of --prompt TEXT or --params-file FILE.json (the Messages body without model)")
    if params_file is not None:
        try:
            params = json.loads(params_file.read_text())
        except OSError as exc:
            raise fail(f"--params-file: cannot read {params_file} ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise fail(f"--params-file: {json_problem(params_file, exc)}") from None
        if not isinstance(params, dict):
            raise fail(f"--params-file: {params_file} must hold a JSON object (the request body without model)")
        if system is not None:
            raise fail("--system goes with --prompt; put the system prompt in the --params-file body")
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        return params
    params = {"max_tokens": max_tokens or 1024, "messages": [{"role": "user", "content": prompt}]}
    if system is not None:
        params["system"] = system
    return params


def _progress_line(job: dict[str, Any], started: float) -> Text:
    tokens = (job.get("progress") or {}).get("output_tokens_so_far", 0)
    waiting = job.get("waiting") or {}
    why = f" ({waiting['reason']})" if waiting.get("reason") and job["status"] in ("queued", "retrying") else ""
    return Text.assemble(
        (f"{job['id']}  ", "dim"), _status(job["status"]), why,
        f"  {tokens:,} output tokens so far  {time.monotonic() - started:.0f}s",
    )  # fmt: skip


def _follow(api: Api, job_id: str, interval: float) -> dict[str, Any]:
    """Poll until the job ends: a live spinner with its status and output tokens so far (one line per change of
    status when stderr is not a terminal). Ctrl-C stops following, not the job."""
    started = time.monotonic()
    job: dict[str, Any] = api.call("GET", f"/v1/jobs/{job_id}")
    shown = job["status"]
    spinner = Spinner("dots", text=_progress_line(job, started), style="cyan")
    try:
        with Live(spinner, console=err, transient=True, auto_refresh=err.is_terminal, refresh_per_second=8):
            while job["status"] not in TERMINAL:
                time.sleep(interval)
                job = api.call("GET", f"/v1/jobs/{job_id}")
                spinner.update(text=_progress_line(job, started))
                if not err.is_terminal and job["status"] != shown:
                    shown = job["status"]
                    err.print(_progress_line(job, started))
    except KeyboardInterrupt:
        err.print(f"stopped following; {job_id} keeps going (`mmjobs job get {job_id}`)", highlight=False)
        raise typer.Exit(130) from None
    return job


@job_app.command()
def submit(
    model: Annotated[str, typer.Option(help="e.g. MiniMax-M2.7.")],
    prompt: Annotated[str | None, typer.Option(help="The user message.")] = None,
    params_file: Annotated[
        Path | None, typer.Option(help="A JSON file: the Messages / Chat Completions body without model and stream.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Longest answer (default 1024 with --prompt).", show_default=False)
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt (with --prompt).")] = None,
    format: Annotated[Format, typer.Option(help="The request body shape.")] = Format.anthropic,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE on the job (repeatable).")] = None,
    priority: Annotated[int | None, typer.Option(help="-100..100, higher first.", show_default=False)] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends and print its answer.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --wait.")] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON for the job, not its id.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Submit one job. Prints its id; with --wait, follows it and prints the answer's text."""
    body: dict[str, Any] = {
        "model": model, "format": format.value, "params": _params(prompt, params_file, max_tokens, system),
    }  # fmt: skip
    if metadata:
        body["metadata"] = _pairs(metadata, "--metadata", parse_json=False)
    if priority is not None:
        body["priority"] = priority
    api = _jobs_api(api_url, api_key)
    job = api.call("POST", "/v1/jobs", json=body)
    err.print(f"submitted {job['id']} ({job['status']})", highlight=False)
    if wait:
        job = _follow(api, job["id"], interval)
    if as_json:
        _json(job)
    elif not wait:
        out.print(job["id"], highlight=False, markup=False)
    if wait:
        usage = job["usage"]
        err.print(
            f"{job['id']} {job['status']}: {usage['input_tokens']:,} input + {usage['output_tokens']:,} output "
            f"tokens, ${float(usage['cost_usd']):.6f}",
            highlight=False,
            markup=False,
        )
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            raise fail(f"{error.get('type', job['status'])}: {error.get('message', '')}")
        if not as_json:
            out.print((job.get("result") or {}).get("text", ""), highlight=False, markup=False)


@job_app.command()
def get(job_id: JobId, as_json: AsJson = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Show a job: status, why it waits, attempts, usage, error and result text."""
    job = _jobs_api(api_url, api_key).call("GET", f"/v1/jobs/{job_id}")
    if as_json:
        _json(job)
        return
    usage, waiting = job["usage"], job.get("waiting") or {}
    head = Text.assemble((f"{job['id']}  ", "bold"), _status(job["status"]), f"  {job['model']} ({job['format']})")
    if waiting.get("reason") and job["status"] not in TERMINAL:
        until = f" until {_time(waiting['until'])}" if waiting.get("until") else ""
        head.append(f"  waiting: {waiting['reason']}{until}")
    out.print(head, soft_wrap=True)
    out.print(
        f"created {_time(job['created_at'])}   finished {_time(job['finished_at']) or '-'}   "
        f"attempts {job['attempt_count']}/{job['max_attempts']}\n"
        f"tokens {usage['input_tokens']:,} in, {usage['output_tokens']:,} out   cost ${float(usage['cost_usd']):.6f}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for a in job.get("attempts") or []:
        parts = [
            f"  attempt {a['number']}  {_time(a['started_at'])}",
            f"{a['duration_ms']} ms" if a["duration_ms"] else "",
        ]
        parts += [
            f"HTTP {a['http_status']}" if a["http_status"] else "",
            f"code {a['minimax_code']}" if a["minimax_code"] else "",
        ]
        parts += [a["classification"] or "", a["error_message"] or ""]
        out.print("  ".join(p for p in parts if p), highlight=False, markup=False, soft_wrap=True)
    if job.get("error"):
        out.print(Text.assemble(("error: ", "red"), f"{job['error'].get('type')}: {job['error'].get('message')}"))
    if job.get("result"):
        out.print((job["result"] or {}).get("text", ""), highlight=False, markup=False)


@job_app.command("list")
def list_jobs(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses (repeatable).")] = None,
    batch_id: Annotated[str | None, typer.Option(help="A batch's requests instead of single jobs.")] = None,
    limit: Annotated[int, typer.Option(help="Jobs per page (1-200).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The next page, as the previous one printed.")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List your single jobs, newest first."""
    params: dict[str, Any] = {"limit": limit, "status": status or []}
    params.update({k: v for k, v in (("cursor", cursor), ("batch_id", batch_id)) if v})
    page = _jobs_api(api_url, api_key).call("GET", "/v1/jobs", params=params)
    if as_json:
        _json(page)
        return
    table = Table("id", "status", "model", "created", "attempts", "input", "output", "cost USD")
    for j in page["data"]:
        u = j["usage"]
        table.add_row(
            j["id"], _status(j["status"]), j["model"], _time(j["created_at"]), str(j["attempt_count"]),
            _num(u["input_tokens"]), _num(u["output_tokens"]), f"{float(u['cost_usd']):.6f}",
        )  # fmt: skip
    out.print(whole_ids(table, "id"))
    if page["has_more"]:
        err.print(f"more: mmjobs job list --cursor {page['next_cursor']}", highlight=False)


@job_app.command()
def cancel(job_id: JobId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Cancel a job that has not finished (a running call is stopped)."""
    job = _jobs_api(api_url, api_key).call("POST", f"/v1/jobs/{job_id}/cancel")
    out.print(Text.assemble(f"{job['id']}  ", _status(job["status"])))


@limits_app.callback(invoke_without_command=True)
def limits(as_json: AsJson = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Per model: configured rpm/tpm, effective (lowered while MiniMax answers 429) and used this window; your caps."""
    doc = Api(api_url, api_key).call("GET", "/v1/limits")
    if as_json:
        _json(doc)
        return
    table = Table(
        "model", "rpm", "tpm", "effective rpm", "effective tpm", "requests used", "tokens used",
        title=f"account {doc['account']!r}, {doc['window_seconds']}s window", title_justify="left",
    )  # fmt: skip
    for m in doc["models"]:
        conf, eff, used = m["configured"], m["effective"] or {}, m["used"] or {}
        lowered = eff and (eff.get("rpm", conf["rpm"]) < conf["rpm"] or eff.get("tpm", conf["tpm"]) < conf["tpm"])
        table.add_row(
            Text(m["model"] + (" (backing off)" if lowered else ""), style="yellow" if lowered else ""),
            _num(conf["rpm"]), _num(conf["tpm"]), _num(eff.get("rpm")), _num(eff.get("tpm")),
            _num(used.get("requests")), _num(used.get("tokens")),
        )  # fmt: skip
    out.print(table)
    tenant = doc["tenant"]
    caps = ", ".join(f"{k} {'no cap' if v is None else f'{v:,}'}" for k, v in tenant["configured"].items())
    out.print(f"tenant {tenant['tenant']}: {caps}", highlight=False, markup=False)
    if doc["as_of"] is None:
        err.print("no scheduler reported in the last 30 s: effective limits and use are unknown (is one running?)")


@webhooks_app.command()
def deliveries(
    status: Annotated[DeliveryStatus | None, typer.Option(help="Only deliveries in this state.")] = None,
    endpoint_id: Annotated[str | None, typer.Option(help="Only this endpoint's deliveries.")] = None,
    limit: Annotated[int, typer.Option(help="Deliveries per page (1-200).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The next page, as the previous one printed.")] = None,
    as_json: AsJson = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Webhook deliveries, newest first, with their last attempt."""
    params: dict[str, Any] = {"limit": limit}
    given = (("status", status.value if status else None), ("endpoint_id", endpoint_id), ("cursor", cursor))
    params.update({k: v for k, v in given if v})
    api = Api(api_url, api_key, not_found_hint="see `mmjobs webhooks endpoints`")
    page = api.call("GET", "/v1/webhook-deliveries", params=params)
    if as_json:
        _json(page)
        return
    table = Table("id", "event", "to", "status", "attempts", "last attempt", "last answer", "next attempt")
    for d in page["data"]:
        last = d["attempts"][-1] if d["attempts"] else None
        answer = "" if last is None else str(last["http_status"] or last["error"] or "")
        table.add_row(
            d["id"], d["event_type"], d["endpoint_id"] or d["url"] or "", _status(d["status"]),
            str(d["attempt_count"]), _time(d["last_attempt_at"]), answer, _time(d["next_attempt_at"]),
        )  # fmt: skip
    out.print(whole_ids(table, "id"))
    if page["has_more"]:
        err.print(f"more: mmjobs webhooks deliveries --cursor {page['next_cursor']}", highlight=False)


@webhooks_app.command()
def redeliver(
    delivery_id: Annotated[str, typer.Argument(help="The delivery id, as `mmjobs webhooks deliveries` shows.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Send a delivery again now (whether pending, delivered or failed)."""
    api = Api(api_url, api_key, not_found_hint="see `mmjobs webhooks deliveries`")
    d = api.call("POST", f"/v1/webhook-deliveries/{delivery_id}/redeliver")
    err.print(f"queued another attempt of {d['id']} ({d['event_type']})", highlight=False)
    out.print(d["id"], highlight=False, markup=False)


@webhooks_app.command()
def endpoints(as_json: AsJson = False, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Your webhook endpoints, newest first."""
    api, cursor = Api(api_url, api_key), None
    found: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/v1/webhook-endpoints", params={"limit": 200, **({"cursor": cursor} if cursor else {})})
        found += page["data"]
        cursor = page["next_cursor"]
        if not page["has_more"] or not cursor:
            break
    if as_json:
        _json({"object": "list", "data": found, "has_more": False, "next_cursor": None})
        return
    if not found:
        err.print("no webhook endpoints (create one with POST /v1/webhook-endpoints)")
        return
    table = Table("id", "url", "events", "enabled", "created")
    for e in found:
        state = "yes" if e["enabled"] else f"no ({e['disabled_reason'] or 'disabled'})"
        table.add_row(e["id"], e["url"], ", ".join(e["event_types"]) or "all", state, _time(e["created_at"]))
    out.print(whole_ids(table, "id"))
