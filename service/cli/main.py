"""The `mmjobs` command: run each part of the service, or all of them at once with `mmjobs up`.

The worker and scheduler commands exec their processes rather than import them: the intake package never
imports worker code (DESIGN.md).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from service.cli.accounts import tenant_key_app
from service.cli.batch import batch_app, whole_ids
from service.cli.jobs import job_app, limits_app, webhooks_app
from service.cli.media import video_app
from service.cli.schedules import schedules_app
from service.config import get_settings
from service.db import engine_for, make_session_factory, transaction
from service.doctor import doctor

app = typer.Typer(help="minimax-jobs: asynchronous jobs for MiniMax models.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
tenants_app = typer.Typer(help="Tenant settings.", no_args_is_help=True)
budgets_app = typer.Typer(help="USD budgets per tenant or API key.", no_args_is_help=True)
app.add_typer(budgets_app, name="budgets")
app.add_typer(tenants_app, name="tenants")
tenants_app.add_typer(tenant_key_app, name="key")
app.add_typer(batch_app, name="batch")
app.add_typer(video_app, name="video")
app.add_typer(schedules_app, name="schedules")
app.add_typer(job_app, name="job")
app.add_typer(limits_app, name="limits")
app.add_typer(webhooks_app, name="webhooks")
app.command()(doctor)
console = Console()
err = Console(stderr=True)


@app.callback()
def _settings_first() -> None:
    """Invalid settings are one line naming the variable, before any command runs."""
    from pydantic import ValidationError

    try:
        get_settings()
    except ValidationError as exc:
        problems = "; ".join(f"MMJOBS_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        raise _fail(f"invalid settings: {problems}") from None


def _database_problem(exc: Exception) -> typer.Exit:
    """A known database condition as one line: which database, what happened, what to do."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from service.embedded import shown

    settings = get_settings()
    url = shown(settings.database_url)
    local = settings.local_up()
    if isinstance(exc, ProgrammingError) and "does not exist" in str(exc.orig):
        return _fail(f"the database at {url} has no schema (or an old one): run `mmjobs migrate`")
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if local is not None and not settings.configured("database_url"):
        hint = (
            f"It is the database `mmjobs up` used here ({settings.data_dir}/up.json): start `mmjobs up` (or `make up`)"
        )
    elif isinstance(exc, OperationalError):
        hint = "Start Postgres, or point MMJOBS_DATABASE_URL at one (`mmjobs up` runs one for you)"
    else:
        hint = "Check MMJOBS_DATABASE_URL"
    return _fail(f"cannot use the database at {url}: {reason}. {hint}")


@contextmanager
def _session() -> Iterator[Session]:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        with transaction(make_session_factory(engine_for(get_settings()))) as session:
            yield session
    except (OperationalError, ProgrammingError) as exc:
        raise _database_problem(exc) from None


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(1)


def _print_json(data: object) -> None:
    """JSON on stdout: datetimes as ISO 8601, decimals as strings (exact, like the API's)."""
    from datetime import date, datetime

    def encode(value: object) -> str:
        return value.isoformat() if isinstance(value, datetime | date) else str(value)

    sys.stdout.write(json.dumps(data, indent=2, default=encode) + "\n")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from service.migrate import upgrade

    settings = get_settings()
    try:
        upgrade(settings.database_url)
    except (OperationalError, ProgrammingError) as exc:
        raise _database_problem(exc) from None
    console.print("schema is up to date")


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            envvar="MMJOBS_API_WORKERS",
            help="Uvicorn worker processes (default: one per CPU, at most 4; each holds up to MMJOBS_DB_POOL_SIZE "
            "database connections).",
        ),
    ] = None,
) -> None:
    """Serve the REST API."""
    import uvicorn

    if workers is None:  # one process per core serves more submissions per second (issue 17.1)
        workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers < 1:
        raise _fail("--workers must be at least 1")

    # uvicorn drains, then raises the SIGTERM again into the handler that was there before it: make that an
    # orderly exit 0 (a drained API is a clean stop), not death by signal.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        # Requests served at once are capped by the app (MMJOBS_API_MAX_CONCURRENCY, 503 beyond); uvicorn's own
        # limit counts idle keep-alive connections too, so it would turn away clients that send nothing.
        # On SIGTERM, finish the requests in flight (up to this long) before exiting.
        timeout_graceful_shutdown=30,
    )


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *argv])


def _worker_argv(concurrency: int | None) -> list[str]:
    """Celery's own threads only receive messages (MMJOBS_WORKER_RECEIVERS); the calls run on the process's call
    threads, `concurrency` of them (MMJOBS_WORKER_CONCURRENCY, passed on in the environment)."""
    settings = get_settings()
    if concurrency:
        os.environ["MMJOBS_WORKER_CONCURRENCY"] = str(concurrency)
    return [
        "-m", "celery", "-A", "workers.celery_app", "worker",
        "--pool", "threads",
        "--concurrency", str(settings.worker_receivers),
        "--queues", "mmjobs",
        # Heartbeats and task events (the app's config) let Flower list the worker and its tasks; gossip and
        # mingle (worker-to-worker chatter) stay off: nothing here uses them.
        "--without-gossip", "--without-mingle",
        "--loglevel", settings.log_level,
    ]  # fmt: skip


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Upstream calls in flight in this process.")] = None,
) -> None:
    """Run a Celery worker (threads pool: one process holds many calls in flight)."""
    _exec(_worker_argv(concurrency))


@app.command()
def scheduler() -> None:
    """Run the scheduler: dispatch due jobs, recover expired leases, expire overdue jobs."""
    _exec(["-m", "workers.scheduler"])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulator(ctx: typer.Context) -> None:
    """Run the MiniMax simulator.

    Options: --host --port --latency MIN[-MAX] --rpm N --tpm N --fault KIND=RATE (repeatable).
    """
    _exec(["-m", "simulator", *ctx.args])


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant name; created if new.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
) -> None:
    """Create an API key. The secret is printed once and never stored."""
    from service.tenants import service as tenants

    with _session() as session:
        new = tenants.create_key(session, tenant_name=tenant, name=name)
    console.print(f"key id: {new.key.id}  tenant: {tenant}")
    console.print("secret (shown once):")
    print(new.secret)  # noqa: T201 - plain stdout so scripts can capture it


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: a JSON list.")] = False,
) -> None:
    """List API keys (never their secrets)."""
    from service.tenants import service as tenants

    with _session() as session:
        rows = tenants.list_keys(session, tenant_name=tenant)
        if as_json:
            keys = [
                {"id": k.id, "tenant": k.tenant.name, "name": k.name, "prefix": k.prefix, "created_at": k.created_at,
                 "revoked_at": k.revoked_at}
                for k in rows
            ]  # fmt: skip
            _print_json(keys)
            return
        table = Table("id", "tenant", "name", "prefix", "created", "revoked")
        for k in rows:
            table.add_row(
                k.id,
                k.tenant.name,
                k.name,
                k.prefix + "...",
                f"{k.created_at:%Y-%m-%d %H:%M}",
                f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "",
            )
    console.print(whole_ids(table, "id"))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (key_...), as `keys list` shows.")],
) -> None:
    """Revoke an API key: it answers 401 from now on, and the schedules it made are paused (with the reason)."""
    from service.tenants import service as tenants

    with _session() as session:
        revoked = tenants.revoke_key(session, key_id=key_id)
        if revoked is None:
            raise _fail(f"no active key {key_id!r}; see `mmjobs keys list`")
    console.print(f"revoked {key_id}")
    if revoked.paused_schedules:
        console.print(f"paused its schedules: {', '.join(revoked.paused_schedules)}")


_INTAKE_HELP = "%s: a number, `default` (the operator's MMJOBS_ setting) or `unlimited`."


@tenants_app.command("limits")
def tenants_limits(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute; 0 removes the cap.")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute; 0 removes the cap.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Calls in flight; 0 removes the cap.")] = None,
    requests_per_minute: Annotated[str | None, typer.Option(help=_INTAKE_HELP % "API requests per minute")] = None,
    key_requests_per_minute: Annotated[
        str | None, typer.Option(help=_INTAKE_HELP % "API requests per minute per key")
    ] = None,
    max_queued_jobs: Annotated[str | None, typer.Option(help=_INTAKE_HELP % "Jobs waiting to run")] = None,
    max_active_batches: Annotated[str | None, typer.Option(help=_INTAKE_HELP % "Batches not ended")] = None,
    max_schedules: Annotated[str | None, typer.Option(help=_INTAKE_HELP % "Schedules")] = None,
    max_file_bytes: Annotated[str | None, typer.Option(help=_INTAKE_HELP % "Bytes of stored files")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: the limits as JSON.")] = False,
) -> None:
    """Show or change a tenant's caps on its share of the upstream account, and its intake limits (request
    rates and maxima; GET /v1/limits shows them to the tenant)."""
    from service.config import get_settings
    from service.limits import policy
    from service.tenants import repository

    given = {"rpm_limit": rpm, "tpm_limit": tpm, "concurrency_limit": concurrency}
    changes = {k: (v or None) for k, v in given.items() if v is not None}
    intake = {
        "requests_per_minute": requests_per_minute, "key_requests_per_minute": key_requests_per_minute,
        "max_queued_jobs": max_queued_jobs, "max_active_batches": max_active_batches, "max_schedules": max_schedules,
        "max_stored_file_bytes": max_file_bytes,
    }  # fmt: skip
    for column, text in intake.items():
        if text is not None:
            changes[column] = _intake_value(column, text)
    with _session() as session:
        if not repository.set_caps(session, name=name, changes=changes):
            raise _fail(f"no tenant {name!r}; create one with `mmjobs keys create --tenant {name}`")
        tenant = repository.get_tenant_by_name(session, name=name)
        assert tenant is not None
        shown = {"rpm": tenant.rpm_limit, "tpm": tenant.tpm_limit, "concurrency": tenant.concurrency_limit}
        limits = policy.for_tenant(tenant, get_settings()).all()
        disabled = tenant.disabled_at
    if as_json:
        data: dict[str, object] = {"tenant": name, "disabled_at": disabled, **shown}
        data["intake"] = {lim.name: {"limit": lim.value, "source": lim.source} for lim in limits}
        _print_json(data)
        return
    console.print(f"{name}: " + ", ".join(f"{k} {v if v is not None else 'uncapped'}" for k, v in shown.items()))
    for lim in limits:
        value = f"{lim.value:,}" if lim.value is not None else "unlimited"
        console.print(f"  {lim.name}: {value} ({'tenant override' if lim.source == 'tenant' else 'default'})")
    if disabled is not None:
        console.print(f"  disabled since {disabled:%Y-%m-%d %H:%M} UTC")


def _intake_value(column: str, text: str) -> int | None:
    """`default` -> None (the operator's default applies), `unlimited` or 0 -> 0 (no limit), N -> N."""
    word = text.strip().lower()
    if word == "default":
        return None
    if word in ("unlimited", "none"):
        return 0
    try:
        value = int(word.replace("_", ""))
    except ValueError:
        raise _fail(f"--{column.replace('_', '-')}: give a number, `default` or `unlimited`, not {text!r}") from None
    if value < 0:
        raise _fail(f"--{column.replace('_', '-')}: must not be negative")
    return value


@tenants_app.command("disable")
def tenants_disable(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Disable a tenant: its schedules stop firing, its waiting jobs are not dispatched, it creates nothing (403).
    It can still read and cancel; calls already running finish."""
    from service.tenants import service as tenants

    with _session() as session:
        if tenants.disable(session, name=name) is None:
            raise _fail(f"no tenant {name!r}")
    console.print(f"disabled {name}")


@tenants_app.command("enable")
def tenants_enable(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Enable a disabled tenant: its work runs again; schedules go on from now (missed due times are skipped)."""
    from service.tenants import service as tenants

    with _session() as session:
        if tenants.enable(session, name=name) is None:
            raise _fail(f"no tenant {name!r}")
    console.print(f"enabled {name}")


@budgets_app.command("set")
def budgets_set(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    limit: Annotated[float, typer.Option(help="USD limit.")],
    period: Annotated[str, typer.Option(help="monthly or total.")] = "monthly",
    soft: Annotated[float | None, typer.Option(help="USD soft limit: a budget.soft_limit webhook event.")] = None,
    key: Annotated[str | None, typer.Option(help="Limit one API key (key_...) instead of the whole tenant.")] = None,
) -> None:
    """Set a budget. Jobs over it are refused with 402; batches pause and resume when it is raised."""
    from decimal import Decimal

    from service.db import utcnow
    from service.tenants import repository
    from service.usage import budgets

    if period not in ("monthly", "total"):
        raise _fail("--period must be monthly or total")
    with _session() as session:
        found = repository.get_tenant_by_name(session, name=tenant)
        if found is None:
            raise _fail(f"no tenant {tenant!r}; create one with `mmjobs keys create --tenant {tenant}`")
        b = budgets.upsert(
            session,
            tenant_id=found.id,
            api_key_id=key,
            period=period,
            limit_usd=Decimal(str(limit)),
            soft_limit_usd=Decimal(str(soft)) if soft is not None else None,
            now=utcnow(),
        )
        console.print(f"{tenant}: {b.period} budget ${b.limit_usd:.2f} (spent ${b.spent_usd:.4f}) [{b.id}]")


@app.command()
def usage(
    tenant: Annotated[str | None, typer.Option(help="One tenant (default: all).")] = None,
    group_by: Annotated[str, typer.Option(help="day, model, api_key or batch.")] = "day",
    days: Annotated[int, typer.Option(help="How many days back.")] = 30,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: the rows as a JSON list.")] = False,
) -> None:
    """Token usage and cost from the ledger, as a table."""
    from datetime import timedelta

    from service.db import utcnow
    from service.tenants import repository as tenants_repo
    from service.usage import repository

    if group_by not in repository.GROUPS:
        raise _fail(f"--group-by must be one of {', '.join(repository.GROUPS)}")
    with _session() as session:
        tenant_id = None
        if tenant is not None:
            found = tenants_repo.get_tenant_by_name(session, name=tenant)
            if found is None:
                raise _fail(f"no tenant {tenant!r}")
            tenant_id = found.id
        rows = repository.totals(
            session, tenant_id=tenant_id, start=utcnow() - timedelta(days=days), end=None, group_by=group_by
        )
    if as_json:
        _print_json(rows)
        return
    table = Table(group_by, "jobs", "attempts", "input", "output", "cache read", "cache write", "cost USD",
                  "estimated (attempts: in / out)")  # fmt: skip
    for r in rows:
        estimated = (
            f"{r['estimated_attempts']}: {r['estimated_input_tokens']:,} / {r['estimated_output_tokens']:,}"
            if r["estimated_attempts"] else "-"
        )  # fmt: skip
        table.add_row(
            str(r["key"]), str(r["jobs"]), str(r["attempts"]), f"{r['input_tokens']:,}", f"{r['output_tokens']:,}",
            f"{r['cache_read_tokens']:,}", f"{r['cache_write_tokens']:,}", f"{r['cost_usd']:.6f}", estimated,
        )  # fmt: skip
    console.print(whole_ids(table, "api_key", "batch"))
    if any(r["estimated_attempts"] for r in rows):
        console.print("estimated: included in the totals; counted by us because the call broke or was stopped "
                      "before MiniMax reported its usage")  # fmt: skip


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="API interface (default 127.0.0.1).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8000).", show_default=False)] = None,
    simulator_port: Annotated[
        int | None, typer.Option(help="The bundled simulator's port (default 8765).", show_default=False)
    ] = None,
) -> None:
    """Run everything on this machine: API, worker and scheduler, and the bundled simulator when MINIMAX_API_KEY is
    unset. Postgres and Redis: the configured ones, else the local ones, else embedded servers under .mmjobs/."""
    from service.embedded import run_embedded

    settings = get_settings()
    run_embedded(
        settings,
        host=host or settings.api_host,
        port=port or settings.api_port,
        simulator_port=simulator_port or settings.simulator_port,
        console=console,
    )


if __name__ == "__main__":
    app()
