"""Tenants and their API keys. Keys are shown once at creation and stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session

from service.db import new_id, utcnow
from service.models import ApiKey, Tenant
from service.schedules import pausing
from service.tenants import keycache, repository

KEY_PREFIX = "mmj_"


@dataclass(frozen=True, kw_only=True)
class NewKey:
    key: ApiKey
    secret: str


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    tenant = repository.get_tenant_by_name(session, name=name)
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name)
        repository.add(session, tenant)
    return tenant


def create_key(session: Session, *, tenant_name: str, name: str = "") -> NewKey:
    tenant = get_or_create_tenant(session, name=tenant_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(id=new_id("key"), tenant_id=tenant.id, name=name, prefix=secret[:12], key_hash=hash_key(secret))
    repository.add(session, key)
    return NewKey(key=key, secret=secret)


def authenticate(session: Session, *, secret: str, cache: keycache.KeyCache | None = None) -> ApiKey | None:
    """The active key with this secret, or None (unknown or revoked). With `cache`, a key verified moments ago
    is not looked up again (service/tenants/keycache.py says how soon a revocation is seen)."""
    if not secret.startswith(KEY_PREFIX):
        return None
    key_hash = hash_key(secret)
    if cache is None:
        return repository.get_active_key(session, key_hash=key_hash)
    return cache.authenticate(
        session, key_hash=key_hash, load=lambda: repository.get_active_key(session, key_hash=key_hash)
    )


@dataclass(frozen=True, kw_only=True)
class Revoked:
    key: ApiKey
    paused_schedules: list[str]  # ids


def revoke_key(session: Session, *, key_id: str) -> Revoked | None:
    """Revoke a key (it answers 401 from then on) and pause the schedules it made, each with its reason and a
    `schedule.paused` event, so none goes on creating runs billed to it (issue 14.4). None: no active key."""
    key = repository.revoke_key(session, key_id=key_id)
    if key is None:
        return None
    keycache.changed_after_commit(session)  # every API process refuses it from the commit on
    assert key.revoked_at is not None
    paused = pausing.pause_for_revoked_key(session, key=key, now=key.revoked_at)
    return Revoked(key=key, paused_schedules=[s.id for s in paused])


def disable(session: Session, *, name: str) -> Tenant | None:
    """Nothing of the tenant runs from now: its schedules do not fire, its waiting jobs are neither dispatched nor
    claimed (calls already running finish), and it creates nothing (403); it can still read and cancel."""
    keycache.changed_after_commit(session)
    return repository.set_disabled(session, name=name, at=utcnow())


def enable(session: Session, *, name: str) -> Tenant | None:
    """Its work runs again; its schedules go on from now (the due times missed meanwhile are not caught up)."""
    keycache.changed_after_commit(session)
    tenant = repository.set_disabled(session, name=name, at=None)
    if tenant is not None:
        pausing.restart_after_enable(session, tenant_id=tenant.id, now=utcnow())
    return tenant


def list_keys(session: Session, *, tenant_name: str | None = None) -> list[ApiKey]:
    if tenant_name is None:
        return repository.list_keys(session)
    tenant = repository.get_tenant_by_name(session, name=tenant_name)
    return [] if tenant is None else repository.list_keys(session, tenant_id=tenant.id)
