"""A tenant's own MiniMax key (issue 17 part 2): stored encrypted, used only for that tenant's jobs, with its own
limiter (the limits the tenant's account has) and its usage in the tenant's own ledger rows.

Encryption: Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) under MMJOBS_SECRET_KEY (a Fernet key, or
the path of a file holding one). Without it nothing is stored: the command says so. The key is never shown back:
only its fingerprint (`...` and its last four characters). The API encrypts (`set_key`); only workers decrypt
(`decrypt_key`, called from workers/tenant_keys.py when they make the call); the scheduler reads only the columns
stored in clear (`load_accounts`) and needs no secret (DESIGN.md decision 10).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import ValidationError
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from service.config import ModelRateLimit, Settings, UpstreamAccount, _known_models
from service.db import utcnow
from service.minimax_url import normalize_base_url
from service.models import TenantUpstreamKey

log = logging.getLogger("mmjobs.accounts")
PREFIX = "tenant."
_KEY_SHAPE = re.compile(r"^[\x21-\x7e]{8,1024}$")  # printable ASCII, no spaces


class TenantKeyError(ValueError):
    """Bad input or no secret configured; the message names the field or the setting."""


def account_name(tenant_id: str) -> str:
    """The limiter and rotation name of a tenant's own account (never shared with a configured account)."""
    return PREFIX + tenant_id


def generate_secret() -> str:
    return Fernet.generate_key().decode()


def _fernet(settings: Settings) -> Fernet:
    secret = settings.secret_key
    if not secret:
        raise TenantKeyError(
            "MMJOBS_SECRET_KEY is not set: tenants' own MiniMax keys are stored encrypted with it. Generate one "
            "with `mmjobs tenants key generate-secret` and give it to every API and worker process (the scheduler "
            "needs none: it never decrypts)."
        )
    text = secret.strip()
    if not text.endswith("=") and Path(text).is_file():
        text = Path(text).read_text().strip()
    try:
        return Fernet(text.encode())
    except (ValueError, TypeError):
        raise TenantKeyError(
            "MMJOBS_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes) nor a file holding one"
        ) from None


def fingerprint(api_key: str) -> str:
    return "..." + api_key[-4:]


def _limits(value: Any) -> dict[str, dict[str, int | None]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TenantKeyError('rate_limits: give an object like {"MiniMax-M2.7": {"rpm": 60}}')
    try:
        parsed = {str(m): ModelRateLimit.model_validate(v) for m, v in value.items()}
        _known_models(parsed)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise TenantKeyError(f"rate_limits.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    except ValueError as exc:
        raise TenantKeyError(f"rate_limits: {exc}") from None
    return {m: v.model_dump() for m, v in parsed.items()}


def set_key(
    session: Session,
    *,
    tenant_id: str,
    api_key: str,
    base_url: str,
    rate_limits: Any,
    settings: Settings,
) -> str:
    """Store (or replace) the tenant's key, encrypted; returns its fingerprint. Raises TenantKeyError naming the
    field at fault, or the missing MMJOBS_SECRET_KEY."""
    box = _fernet(settings)
    if not isinstance(api_key, str) or not _KEY_SHAPE.match(api_key):
        raise TenantKeyError("api_key: give the MiniMax key as it was issued (8 to 1024 printable characters)")
    try:
        root = normalize_base_url(base_url)
    except ValueError as exc:
        raise TenantKeyError(f"base_url: {exc}") from None
    allowed = {"https://api.minimax.io", "https://api.minimaxi.com", *(a.base_url for a in settings.accounts())}
    if root not in allowed:
        # MiniMax's own hosts (or one the operator configured): a tenant must not point our workers at an address
        # of its choosing.
        raise TenantKeyError("base_url: give https://api.minimax.io or https://api.minimaxi.com (China)")
    limits = _limits(rate_limits)
    row = {
        "tenant_id": tenant_id,
        "encrypted_key": box.encrypt(api_key.encode()),
        "fingerprint": fingerprint(api_key),
        "base_url": root,
        "rate_limits": limits,
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    statement = insert(TenantUpstreamKey).values(row)
    statement = statement.on_conflict_do_update(
        index_elements=[TenantUpstreamKey.tenant_id],
        set_={
            k: statement.excluded[k] for k in ("encrypted_key", "fingerprint", "base_url", "rate_limits", "updated_at")
        },
    )
    session.execute(statement)
    return str(row["fingerprint"])


def remove_key(session: Session, *, tenant_id: str) -> bool:
    result = session.execute(delete(TenantUpstreamKey).where(TenantUpstreamKey.tenant_id == tenant_id))
    return bool(getattr(result, "rowcount", 0))


def describe(session: Session, *, tenant_id: str) -> dict[str, Any] | None:
    """What may be shown: fingerprint, base URL, limits. Never the key."""
    row = session.get(TenantUpstreamKey, tenant_id)
    if row is None:
        return None
    return {
        "account": account_name(tenant_id),
        "fingerprint": row.fingerprint,
        "base_url": row.base_url,
        "rate_limits": row.rate_limits,
    }


def load_accounts(session: Session) -> dict[str, tuple[UpstreamAccount, str]]:
    """Every tenant's own account as the dispatcher needs it, by tenant id: name, base URL and declared limits (all
    stored in clear) and the key's version (when it was last set). Never the key: the ciphertext is not even read
    here, so this needs no MMJOBS_SECRET_KEY. The account's `api_key` is always empty; only a worker decrypts
    (`decrypt_key`)."""
    rows = session.execute(
        select(
            TenantUpstreamKey.tenant_id,
            TenantUpstreamKey.base_url,
            TenantUpstreamKey.rate_limits,
            TenantUpstreamKey.created_at,
            TenantUpstreamKey.updated_at,
        )
    ).all()
    return {
        row.tenant_id: (
            UpstreamAccount.model_construct(
                name=account_name(row.tenant_id),
                api_key="",
                base_url=row.base_url,
                weight=1.0,
                rate_limits={m: ModelRateLimit.model_validate(v) for m, v in (row.rate_limits or {}).items()},
            ),
            version(row.updated_at or row.created_at),
        )
        for row in rows
    }


def version(when: Any) -> str:
    """A key's version: when it was last set. A hold on an unusable key (service/accounts/) names the version it
    was found unusable at, so a key set again since is tried at once."""
    return when.isoformat() if when is not None else ""


class TenantKeyUnusable(Exception):
    """The tenant's stored key cannot be decrypted here (MMJOBS_SECRET_KEY unset, malformed or not the one it was
    encrypted with). The message says which, never the key."""

    def __init__(self, message: str, *, key_version: str) -> None:
        super().__init__(message)
        self.message = message
        self.key_version = key_version


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenKey:
    """A tenant's key as a worker calls with it: never logged, never stored, never sent anywhere but its base URL."""

    api_key: str = field(repr=False)
    base_url: str
    version: str


def decrypt_key(session: Session, settings: Settings, *, tenant_id: str) -> OpenKey | None:
    """The tenant's key in clear with its base URL, or None when the tenant has no own key (any more). Called by
    workers only, when they make the call (DESIGN.md decision 10). Raises TenantKeyUnusable."""
    row = session.get(TenantUpstreamKey, tenant_id)
    if row is None:
        return None
    at = version(row.updated_at or row.created_at)
    try:
        box = _fernet(settings)
    except TenantKeyError as exc:
        raise TenantKeyUnusable(f"the worker cannot decrypt your own MiniMax key: {exc}", key_version=at) from None
    try:
        return OpenKey(api_key=box.decrypt(row.encrypted_key).decode(), base_url=row.base_url, version=at)
    except InvalidToken:
        raise TenantKeyUnusable(
            "the worker cannot decrypt your own MiniMax key: it was encrypted under another MMJOBS_SECRET_KEY than "
            "the workers have (the operator changed or lost it). Ask the operator to restore it, or set your key "
            "again (PUT /v1/limits/upstream-key)",
            key_version=at,
        ) from None
