"""Tenants' own MiniMax keys as a worker uses them (DESIGN.md decision 10): decrypted here, in the worker, when a
call is made, and nowhere else. The scheduler only ever reads what is stored in clear (workers/limiter/accounts.py).

A key decrypted once is kept in this process's memory for TENANT_KEYS_SECONDS, like the accounts the pool reads:
a changed key is used after at most that long. A key that cannot be decrypted is not kept: the next job tries again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service.accounts import tenant_keys
from service.config import Settings
from workers.limiter.accounts import TENANT_KEYS_SECONDS


class TenantKeyRing:
    def __init__(self, settings: Settings, sessions: Callable[[], sessionmaker[Session]]) -> None:
        self.settings = settings
        self._sessions = sessions
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[tenant_keys.OpenKey | None, float]] = {}

    def key(self, tenant_id: str) -> tenant_keys.OpenKey | None:
        """The tenant's key in clear with its base URL; None when it has no own key (any more). Raises
        tenant_keys.TenantKeyUnusable when this worker cannot decrypt it."""
        clock = time.monotonic()
        with self._lock:
            kept = self._kept.get(tenant_id)
        if kept is not None and clock - kept[1] < TENANT_KEYS_SECONDS:
            return kept[0]
        with self._sessions()() as session:
            found = tenant_keys.decrypt_key(session, self.settings, tenant_id=tenant_id)
        with self._lock:
            self._kept[tenant_id] = (found, clock)
        return found

    def forget(self, tenant_id: str) -> None:
        with self._lock:
            self._kept.pop(tenant_id, None)
