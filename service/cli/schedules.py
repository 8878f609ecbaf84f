"""`mmjobs schedules ...`: create, list, pause, resume, trigger and delete schedules, through the REST API.

A client of the API like `mmjobs batch` (`--api-url`, `--api-key`, or MMJOBS_API_URL / MMJOBS_API_KEY). Ids and
data go to stdout, human messages to stderr, so `ID=$(mmjobs schedules create ...)` works.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from service.cli.batch import DEFAULT_URL, ApiKey, ApiUrl, json_problem, target, whole_ids

schedules_app = typer.Typer(
    help="Cron schedules: a job, a batch or a directory of documents on a timetable.", no_args_is_help=True
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

ScheduleId = Annotated[str, typer.Argument(help="The schedule id (sch_...), as `mmjobs schedules list` shows.")]


class Overlap(StrEnum):
    skip = "skip"
    allow = "allow"
    buffer_one = "buffer_one"


class Catchup(StrEnum):
    skip = "skip"
    run_once = "run_once"
    all = "all"


def fail(message: str) -> typer.Exit:
    err.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(1)


def call(url: str | None, key: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One request; any failure becomes one line that says what to do, and exit code 1."""
    url, key = target(url, key)
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs
        )
    except httpx.TransportError as exc:
        raise fail(f"cannot reach the API at {url} ({exc}): is `mmjobs up` (or `mmjobs api`) running?") from None
    if response.status_code >= 400:
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = f"the API answered {response.status_code}: {response.text[:200]}"
        if response.status_code == 404:
            message += " (see `mmjobs schedules list`)"
        raise fail(message)
    return response.json() if response.content else None


def _read_json(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise fail(f"{what}: cannot read {path} ({exc.strerror})") from None
    number = None
    try:
        if path.suffix == ".jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), start=1):  # noqa: B007 - the number names the line at fault
                if line.strip():
                    rows.append(json.loads(line))
            return rows
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"{what}: {json_problem(path, exc, number)}") from None


def _params(values: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; a value that is JSON (1024, 0.2, true) is taken as such."""
    params: dict[str, Any] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise fail(f"--param {item!r}: write KEY=VALUE, e.g. --param max_tokens=1024")
        try:
            params[name] = json.loads(value)
        except json.JSONDecodeError:
            params[name] = value
    return params


def _template(job: Path | None, batch: Path | None, documents: str | None, options: dict[str, Any]) -> dict[str, Any]:
    if sum(x is not None for x in (job, batch, documents)) != 1:
        raise fail("give exactly one of --job FILE, --batch FILE or --documents DIR")
    if job is not None:
        return {"job": _read_json(job, "--job")}
    if batch is not None:
        data = _read_json(batch, "--batch")
        return {"batch": {"requests": data} if isinstance(data, list) else data}
    if not options.get("model") or not options.get("prompt"):
        raise fail("--documents needs --model and --prompt")
    return {"documents": {"directory": documents, **{k: v for k, v in options.items() if v is not None}}}


@schedules_app.command()
def create(
    name: Annotated[str, typer.Option(help="A name for people.")],
    cron: Annotated[str, typer.Option(help="5 fields, or @hourly, @daily, @weekly, @monthly, @yearly.")],
    timezone: Annotated[str, typer.Option(help="IANA timezone the cron is read in.")] = "UTC",
    job: Annotated[Path | None, typer.Option(help="A JSON file with a job body (as POST /v1/jobs).")] = None,
    batch: Annotated[
        Path | None, typer.Option(help="A JSON batch body or list of requests, or a .jsonl of requests.")
    ] = None,
    documents: Annotated[str | None, typer.Option(help="A directory on the server (an allowed one).")] = None,
    pattern: Annotated[str, typer.Option(help="--documents: which file names, e.g. *.pdf.")] = "*",
    model: Annotated[str | None, typer.Option(help="--documents: the model.")] = None,
    prompt: Annotated[str | None, typer.Option(help="--documents: template with {document} / {filename}.")] = None,
    system: Annotated[str | None, typer.Option(help="--documents: a system prompt.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="--documents: KEY=VALUE added to each request.")] = None,
    overlap: Annotated[Overlap, typer.Option(help="While the previous run is going.")] = Overlap.skip,
    catchup: Annotated[Catchup, typer.Option(help="Due times missed while no scheduler ran.")] = Catchup.run_once,
    catchup_window: Annotated[int, typer.Option(help="Seconds a missed due time may still run.")] = 86400,
    start_at: Annotated[str | None, typer.Option(help="RFC 3339: no run before.")] = None,
    end_at: Annotated[str | None, typer.Option(help="RFC 3339: no run after.")] = None,
    paused: Annotated[bool, typer.Option(help="Create it paused.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Create a schedule. Prints its id."""
    options = {"pattern": pattern, "model": model, "prompt": prompt, "system": system, "params": _params(param)}
    body: dict[str, Any] = {
        "name": name, "cron": cron, "timezone": timezone, "template": _template(job, batch, documents, options),
        "overlap": overlap.value, "catchup": catchup.value, "catchup_window": catchup_window, "enabled": not paused,
    }  # fmt: skip
    body.update({k: v for k, v in (("start_at", start_at), ("end_at", end_at)) if v is not None})
    created = call(api_url, api_key, "POST", "/v1/schedules", json=body)
    err.print(f"created {created['id']}; next run {created['next_run_at'] or '(paused)'}")
    out.print(created["id"], highlight=False)


@schedules_app.command("list")
def list_schedules(
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON (every page as one list).")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """The schedules, newest first, with their next run and latest outcome."""
    table = Table("id", "name", "cron", "timezone", "state", "next run", "last run", "last outcome")
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200} if cursor is None else {"limit": 200, "cursor": cursor}
        page = call(api_url, api_key, "GET", "/v1/schedules", params=params)
        found += page["data"]
        for s in page["data"]:
            latest = s["latest_runs"][0] if s["latest_runs"] else None
            outcome = (latest["outcome"] or latest["status"]) if latest else ""
            state = "enabled" if s["enabled"] else "paused"
            row = [s["id"], s["name"], s["cron"], s["timezone"], state, s["next_run_at"] or "", s["last_run_at"] or ""]
            table.add_row(*row, outcome)
        cursor = page["next_cursor"]
        if not cursor:
            break
    if as_json:
        typer.echo(json.dumps({"object": "list", "data": found, "has_more": False, "next_cursor": None}, indent=2))
        return
    out.print(whole_ids(table, "id"))


@schedules_app.command()
def show(schedule_id: ScheduleId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """A schedule and its latest runs, as JSON."""
    out.print_json(data=call(api_url, api_key, "GET", f"/v1/schedules/{schedule_id}"))


@schedules_app.command()
def pause(schedule_id: ScheduleId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Pause: no runs until resumed."""
    call(api_url, api_key, "POST", f"/v1/schedules/{schedule_id}/pause")
    err.print(f"paused {schedule_id}")


@schedules_app.command()
def resume(schedule_id: ScheduleId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Resume from the next due time (paused due times are not caught up)."""
    resumed = call(api_url, api_key, "POST", f"/v1/schedules/{schedule_id}/resume")
    err.print(f"resumed {schedule_id}; next run {resumed['next_run_at']}")


@schedules_app.command()
def trigger(schedule_id: ScheduleId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Run now. Prints the run's job or batch id."""
    run = call(api_url, api_key, "POST", f"/v1/schedules/{schedule_id}/trigger")
    err.print(f"run {run['id']} started")
    out.print(run["job_id"] or run["batch_id"], highlight=False)


@schedules_app.command()
def delete(schedule_id: ScheduleId, api_url: ApiUrl = DEFAULT_URL, api_key: ApiKey = None) -> None:
    """Delete a schedule (the jobs and batches it made stay)."""
    call(api_url, api_key, "DELETE", f"/v1/schedules/{schedule_id}")
    err.print(f"deleted {schedule_id}")
