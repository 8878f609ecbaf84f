"""Verified API keys, remembered briefly in each API process so a request does not query Postgres to learn who
sent it (issue 17.1: the key lookup was a transaction of its own on every request).

What is cached: an active key's columns and its tenant's (caps, intake limits, disabled_at), by the key's hash,
and whether the tenant has any budget at all: a tenant without one skips the budget queries on every submission
(`Tenant.no_budgets`). Writing a budget (service/usage/budgets.py `upsert`) bumps the generation like any change.
Unknown and revoked secrets are never cached: they are looked up every time and answer 401.

How stale it can be (the bound). Every change that matters to a request -- a key revoked, a tenant disabled or
enabled, a tenant's limits changed -- goes through service/tenants/ and calls `changed_after_commit`, which, once
the change commits, bumps a generation number in this process and in Redis (GENERATION_KEY). An entry is used only
while both generations are still the ones read before it was loaded, so:
- in the process that made the change, and in every API process when Redis is reachable, the next request after
  the commit sees the change (a request already past authentication finishes as before);
- if Redis could not be reached for the bump or for the check, or a row was changed behind the service's back
  (raw SQL), an entry is trusted for at most CACHE_SECONDS after it was loaded.
When Redis cannot be read, the cache is not used at all (every request looks its key up, as before).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from sqlalchemy import event, exists, inspect, select
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from service.models import ApiKey, Budget, Tenant

log = logging.getLogger("mmjobs.tenants")

GENERATION_KEY = "mmjobs:auth:generation"
CACHE_SECONDS = 5.0
MAX_ENTRIES = 10_000

_local = 0  # this process's generation: bumped after every commit that changed a key or a tenant
_local_lock = threading.Lock()

_KEY_COLUMNS = tuple(a.key for a in inspect(ApiKey).column_attrs)
_TENANT_COLUMNS = tuple(a.key for a in inspect(Tenant).column_attrs)


def _bump(redis_url: str | None) -> None:
    global _local
    with _local_lock:
        _local += 1
    if redis_url is None:
        from service.config import get_settings

        redis_url = get_settings().redis_url
    try:
        redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1).incr(GENERATION_KEY)
    except redis.RedisError as exc:
        log.warning("API key cache not invalidated in other processes: Redis unavailable (%s); they see the change "
                    "within %g s", exc, CACHE_SECONDS)  # fmt: skip


def changed_after_commit(session: Session, *, redis_url: str | None = None) -> None:
    """A key or tenant changed in this session: once it commits, every cached lookup is stale."""
    event.listen(session, "after_commit", lambda _s: _bump(redis_url), once=True)


@dataclass(frozen=True)
class _Entry:
    key: dict[str, Any]
    tenant: dict[str, Any]
    no_budgets: bool
    local: int
    shared: bytes
    loaded_at: float


class KeyCache:
    """One per application (app.state.key_cache); safe to share between the request threads."""

    def __init__(self, client: redis.Redis, *, seconds: float = CACHE_SECONDS) -> None:
        self.client = client
        self.seconds = seconds
        self._entries: dict[str, _Entry] = {}

    def _shared_generation(self) -> bytes | None:
        """The Redis generation (b"": never bumped), or None when Redis cannot be read."""
        try:
            value = self.client.get(GENERATION_KEY)
        except redis.RedisError:
            return None
        return value if isinstance(value, bytes) else b""

    def authenticate(self, session: Session, *, key_hash: str, load: Any) -> ApiKey | None:
        """The active key with this hash: from the cache when its entry is current, else `load()` (the database
        lookup, run in `session`), remembered when it found an active key."""
        local = _local
        shared = self._shared_generation()
        if shared is None:  # the other processes' changes cannot be seen: no cache
            result: ApiKey | None = load()
            return result
        entry = self._entries.get(key_hash)
        if (
            entry is not None
            and entry.local == local
            and entry.shared == shared
            and time.monotonic() - entry.loaded_at < self.seconds
        ):
            return _attach(session, entry)
        key: ApiKey | None = load()
        if key is None:
            self._entries.pop(key_hash, None)
            return None
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        tenant = key.tenant
        tenant.no_budgets = not session.scalar(select(exists().where(Budget.tenant_id == tenant.id)))
        self._entries[key_hash] = _Entry(
            key={c: getattr(key, c) for c in _KEY_COLUMNS},
            tenant={c: getattr(tenant, c) for c in _TENANT_COLUMNS},
            no_budgets=tenant.no_budgets,
            local=local,
            shared=shared,
            loaded_at=time.monotonic(),
        )
        return key


def _attach(session: Session, entry: _Entry) -> ApiKey:
    """The cached key and tenant as persistent objects of `session`, as if just loaded: no SQL."""
    tenant = Tenant(**entry.tenant)
    tenant.no_budgets = entry.no_budgets
    key = ApiKey(**entry.key)
    make_transient_to_detached(tenant)
    make_transient_to_detached(key)
    set_committed_value(key, "tenant", tenant)
    session.add(key)  # cascades to the tenant: both are now in the identity map, clean
    return key
