"""`mmjobs tenants key ...`: a tenant's own MiniMax key (service/accounts/tenant_keys.py). The key is read from
stdin or a hidden prompt, never from the command line (where `ps` and shell history would keep it), and never
printed back: only its fingerprint."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

tenant_key_app = typer.Typer(help="A tenant's own MiniMax key (used only for its jobs).", no_args_is_help=True)


@tenant_key_app.command("set")
def key_set(
    name: Annotated[str, typer.Argument(help="Tenant name.")],
    base_url: Annotated[
        str, typer.Option(help="https://api.minimax.io, or https://api.minimaxi.com for a mainland-China account.")
    ] = "https://api.minimax.io",
    rate_limits: Annotated[
        str | None,
        typer.Option(help='Limits of the account per model, JSON: {"MiniMax-M2.7": {"rpm": 60}}; unset: published.'),
    ] = None,
) -> None:
    """Store the tenant's MiniMax key, encrypted with MMJOBS_SECRET_KEY (read from stdin, or asked for)."""
    from service.accounts import tenant_keys
    from service.cli.main import _fail, _session, console
    from service.config import get_settings
    from service.tenants import repository

    limits = None
    if rate_limits is not None:
        try:
            limits = json.loads(rate_limits)
        except ValueError as exc:
            raise _fail(f"--rate-limits: not valid JSON ({exc})") from None
    secret = sys.stdin.readline().strip() if not sys.stdin.isatty() else typer.prompt("MiniMax key", hide_input=True)
    with _session() as session:
        tenant = repository.get_tenant_by_name(session, name=name)
        if tenant is None:
            raise _fail(f"no tenant {name!r}; create one with `mmjobs keys create --tenant {name}`")
        try:
            shown = tenant_keys.set_key(
                session,
                tenant_id=tenant.id,
                api_key=secret,
                base_url=base_url,
                rate_limits=limits,
                settings=get_settings(),
            )
        except tenant_keys.TenantKeyError as exc:
            raise _fail(str(exc).replace("base_url:", "--base-url:").replace("rate_limits", "--rate-limits")) from None
    console.print(f"{name}: own MiniMax key {shown} stored encrypted; used for {name}'s jobs only")


@tenant_key_app.command("show")
def key_show(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """The tenant's own key: fingerprint, base URL and limits (never the key)."""
    from service.accounts import tenant_keys
    from service.cli.main import _fail, _print_json, _session
    from service.tenants import repository

    with _session() as session:
        tenant = repository.get_tenant_by_name(session, name=name)
        if tenant is None:
            raise _fail(f"no tenant {name!r}")
        _print_json(tenant_keys.describe(session, tenant_id=tenant.id))


@tenant_key_app.command("remove")
def key_remove(name: Annotated[str, typer.Argument(help="Tenant name.")]) -> None:
    """Remove the tenant's own key: its jobs go back to the shared accounts."""
    from service.accounts import tenant_keys
    from service.cli.main import _fail, _session, console
    from service.tenants import repository

    with _session() as session:
        tenant = repository.get_tenant_by_name(session, name=name)
        if tenant is None:
            raise _fail(f"no tenant {name!r}")
        removed = tenant_keys.remove_key(session, tenant_id=tenant.id)
    console.print(f"{name}: own key removed" if removed else f"{name} had no own key")


@tenant_key_app.command("generate-secret")
def generate_secret() -> None:
    """Print a new MMJOBS_SECRET_KEY (a Fernet key) for encrypting tenants' keys."""
    from service.accounts import tenant_keys

    typer.echo(tenant_keys.generate_secret())
