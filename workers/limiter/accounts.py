"""The upstream accounts jobs run on, each with its own shared limiter (issue 17 part 2; service/accounts/).

The dispatcher asks the pool for a permit: the accounts in the rotation are tried in smooth weighted round-robin
order (nginx's: over any run of grants each account's share follows its weight), and an account whose limiter
says no passes its turn to the next, so a job goes to an account with headroom, by weight. The account that
granted is recorded under the permit's id; the worker reads it back to call with that account's key and base URL
and to settle that account's limiter.

With a single account (no MMJOBS_UPSTREAM_ACCOUNTS) the pool is that one account and nothing is recorded or
rotated: it behaves exactly as before (a 1004 fails the job, as there is nowhere else to go).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from sqlalchemy.orm import Session, sessionmaker

from service import accounts
from service.config import Settings, UpstreamAccount
from workers.limiter.limiter import RateLimiter
from workers.limiter.values import Decision, Limits

log = logging.getLogger("mmjobs.accounts")
# How long the pool reuses the set of accounts out of the rotation before reading Redis again.
STATE_CACHE_SECONDS = 1.0
# How long the dispatcher waits before trying again when no account is in the rotation.
NO_ACCOUNT_RETRY_SECONDS = 5.0
PROBE_MODEL = "MiniMax-M2.7"
# How often the dispatcher reads tenants' own keys again (a new or changed key is used after at most this long).
TENANT_KEYS_SECONDS = 10.0
TENANT_PREFIX = "tenant."
# The refusal reason while a tenant's own key is held (service/accounts/ `hold_tenant_key`).
TENANT_KEY_HELD = "tenant_key"
PROBE_TOKENS = 16


@dataclass
class Pooled:
    account: UpstreamAccount
    limiter: RateLimiter
    limits: dict[str, tuple[int, int]]
    current: float = 0.0  # smooth weighted round-robin credit
    version: str = ""  # a tenant's own key: when it was last set (service/accounts/tenant_keys.py `version`)

    @property
    def name(self) -> str:
        return self.account.name

    def model_limits(self, model: str) -> Limits:
        rpm, tpm = self.limits.get(model, (None, None))
        return Limits(rpm=rpm, tpm=tpm)


class AccountPool:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        *,
        limiter: RateLimiter | None = None,
        sessions: Callable[[], sessionmaker[Session] | None] | None = None,
    ) -> None:
        """`limiter`: an existing limiter to reuse for the account of the same name (the single-account case).
        `sessions`: where tenants' own keys are read (service/accounts/tenant_keys.py); None: no own keys."""
        self.settings = settings
        self.client = client
        self.multi = bool(settings.upstream_accounts)
        self.members: list[Pooled] = []
        for account in settings.accounts():
            own = limiter if limiter is not None and limiter.account == account.name else None
            own = own or RateLimiter(client, account=account.name, window_seconds=settings.limiter_window_seconds)
            self.members.append(Pooled(account=account, limiter=own, limits=account.model_limits()))
        self.by_name = {m.name: m for m in self.members}
        self._lock = threading.Lock()
        self._out: set[str] = set()
        self._out_read = -math.inf
        self._sessions = sessions
        # Tenant id -> its own account: name, base URL, limits. Never its key (`account.api_key` is empty): the
        # scheduler never decrypts; a worker does, when it calls (workers/tenant_keys.py).
        self.tenants: dict[str, Pooled] = {}
        self._tenants_read = -math.inf
        self._holds: dict[str, accounts.TenantKeyHold] = {}
        self._holds_read = -math.inf

    def refresh_tenants(self, *, force: bool = False) -> None:
        """Read the tenants' own accounts again (every TENANT_KEYS_SECONDS, or now): what is stored in clear only."""
        if self._sessions is None or (not force and time.monotonic() - self._tenants_read < TENANT_KEYS_SECONDS):
            return
        from service.accounts import tenant_keys

        factory = self._sessions()
        if factory is None:
            return
        try:
            with factory() as session:
                found = tenant_keys.load_accounts(session)
        except Exception as exc:
            log.warning("could not read tenants' own keys (%s); keeping the last known", exc)
            return
        self._tenants_read = time.monotonic()
        tenants = {}
        for tenant_id, (account, version) in found.items():
            old = self.tenants.get(tenant_id)
            own = (
                old.limiter
                if old
                else RateLimiter(self.client, account=account.name, window_seconds=self.settings.limiter_window_seconds)
            )
            tenants[tenant_id] = Pooled(account=account, limiter=own, limits=account.model_limits(), version=version)
        self.tenants = tenants

    def tenant_holds(self, *, fresh: bool = False) -> dict[str, accounts.TenantKeyHold]:
        """Tenants whose own key a worker found unusable, by tenant id (service/accounts/). A hold on an older
        version of the key than the one stored now does not count: a key set again is tried at once."""
        clock = time.monotonic()
        if fresh or clock - self._holds_read >= STATE_CACHE_SECONDS:
            try:
                found = accounts.tenant_key_holds(self.client, sorted(self.tenants))
            except redis.RedisError as exc:
                log.warning("could not read the holds on tenants' own keys (%s); keeping the last known", exc)
                found = self._holds
            self._holds = {t: h for t, h in found.items() if t in self.tenants and h.version == self.tenants[t].version}
            self._holds_read = clock
        return self._holds

    def hold_tenant(
        self, tenant_id: str, *, why: str, message: str, version: str, probe_every: float, code: int | None = None
    ) -> None:
        """A worker found the tenant's own key unusable: its jobs wait until one, let through every `probe_every`
        seconds, succeeds (see service/accounts/)."""
        accounts.hold_tenant_key(
            self.client, tenant_id, why=why, message=message, version=version, probe_every=probe_every, code=code
        )
        self._holds_read = -math.inf

    def tenant_answered(self, tenant_id: str, *, sent_at: float) -> None:
        """A call on the tenant's own key sent at `sent_at` (epoch seconds) succeeded: lift a hold older than it.
        Reads the cached holds first, so a success costs no round trip while nothing is held."""
        if tenant_id in self.tenant_holds():
            accounts.release_tenant_key(self.client, tenant_id, set_before=sent_at)
            self._holds_read = -math.inf

    @property
    def default(self) -> Pooled:
        return self.members[0]

    def get(self, name: str | None) -> Pooled:
        """The account of that name; the first (the single account) for None or a name no longer configured. A
        tenant's own account comes without its key (workers/tenant_keys.py decrypts it)."""
        if name is not None and name in self.by_name:
            return self.by_name[name]
        if name is not None and name.startswith(TENANT_PREFIX):
            tenant_id = name[len(TENANT_PREFIX) :]
            if tenant_id not in self.tenants:
                self.refresh_tenants(force=True)
            if tenant_id in self.tenants:
                return self.tenants[tenant_id]
            # Removed since the dispatch: its limiter only; the worker finds no key and dispatches the job again.
            gone = UpstreamAccount.model_construct(
                name=name, api_key="", base_url=self.default.account.base_url, weight=1.0, rate_limits={}
            )
            return Pooled(account=gone, limiter=RateLimiter(self.client, account=name), limits={})
        return self.default

    def for_permit(self, permit: str) -> Pooled:
        """The account the dispatcher acquired this permit on (read back by the worker)."""
        return self.get(self.chosen_name(permit))

    def chosen_name(self, permit: str, *, tenant_id: str | None = None) -> str | None:
        """The recorded account of a permit; None when nothing was recorded and there is one shared account (then
        the worker calls exactly as it always did: MINIMAX_API_KEY, MINIMAX_BASE_URL).

        With `tenant_id`, a permit whose record is gone (Redis restarted empty, or unreachable) falls back to that
        tenant's own key when it has one: its jobs never run on a shared account's key."""
        try:
            name = accounts.chosen(self.client, permit)
        except redis.RedisError as exc:
            log.warning("could not read the account of permit %s (%s); using the default", permit, exc)
            name = None
        if name is None and tenant_id is not None:
            self.refresh_tenants()
            if tenant_id in self.tenants:
                return TENANT_PREFIX + tenant_id
        if name is None and self.multi:
            return self.default.name
        return name

    def total_limits(self) -> dict[str, tuple[int, int]]:
        """Per model, the sum over the accounts: what the dispatcher paces the whole pool to."""
        totals: dict[str, tuple[int, int]] = {}
        for member in self.members:
            for model, (rpm, tpm) in member.limits.items():
                r, t = totals.get(model, (0, 0))
                totals[model] = (r + rpm, t + tpm)
        return totals

    def out_of_rotation(self, *, fresh: bool = False) -> set[str]:
        if not self.multi:
            return set()
        clock = time.monotonic()
        if fresh or clock - self._out_read >= STATE_CACHE_SECONDS:
            try:
                self._out = accounts.out_of_rotation(self.client, [m.name for m in self.members])
            except redis.RedisError as exc:
                log.warning("could not read the accounts' rotation (%s); keeping the last known", exc)
            self._out_read = clock
        return self._out

    def acquire(
        self,
        *,
        model: str,
        tenant: str,
        tokens: int,
        tenant_limits: Limits | None,
        permit_id: str,
        hold_seconds: float,
    ) -> tuple[Pooled | None, Decision]:
        """A permit on the first account in weighted order whose limiter grants it, recorded under the permit's
        id. Refused: the soonest any account could admit it (math.inf: none ever can, the request is too large)."""

        def take(pooled: Pooled) -> Decision:
            return pooled.limiter.acquire(
                model=model,
                tenant=tenant,
                tokens=tokens,
                model_limits=pooled.model_limits(model),
                tenant_limits=tenant_limits,
                permit_id=permit_id,
                hold_seconds=hold_seconds,
            )

        own = self.tenants.get(tenant)
        if own is not None:
            # A tenant's own key serves its jobs alone, and nothing else; while a worker finds it unusable its jobs
            # wait for it (never another account).
            hold = self.tenant_holds().get(tenant)
            if hold is not None and not accounts.probe_due(self.client, own.name, hold.probe_every):
                return None, Decision(
                    granted=False,
                    permit_id=permit_id,
                    retry_after=max(hold.probe_every, STATE_CACHE_SECONDS),
                    reason=TENANT_KEY_HELD,
                )
            # No hold, or the held key's probe is due: this job goes (its worker lifts the hold if the key answers).
            decision = take(own)
            if decision.granted:
                accounts.record_choice(self.client, permit_id, own.name)
                return own, decision
            return None, decision
        out = self.out_of_rotation()
        with self._lock:
            candidates = [m for m in self.members if m.name not in out]
            total = sum(m.account.weight for m in candidates)
            ordered = sorted(candidates, key=lambda m: m.current + m.account.weight, reverse=True)
        if not candidates:
            return None, Decision(
                granted=False, permit_id=permit_id, retry_after=NO_ACCOUNT_RETRY_SECONDS, reason="no_account"
            )
        refusal: Decision | None = None
        for member in ordered:
            decision = take(member)
            if decision.granted:
                with self._lock:
                    for m in candidates:
                        m.current += m.account.weight
                    member.current -= total
                if self.multi:
                    accounts.record_choice(self.client, permit_id, member.name)
                return member, decision
            if (decision.reason or "").startswith("tenant"):
                return None, decision  # the tenant's caps span every account: another would say the same
            if refusal is None or decision.retry_after < refusal.retry_after:
                refusal = decision
        assert refusal is not None
        return None, refusal

    def take_out(self, name: str, *, code: int | None, error: str) -> bool:
        if not self.multi:
            return False
        changed = accounts.take_out(self.client, name, code=code, error=error)
        self._out_read = -math.inf
        return changed

    def probe(self, http: httpx.Client) -> dict[str, bool]:
        """One one-token call on each account out of the rotation whose probe is due: back in if it answers with
        anything but 1004/2049/1008 (or cannot be reached). The probe takes a permit like any call."""
        from service.doctor import check_format

        results: dict[str, bool] = {}
        for name in sorted(self.out_of_rotation(fresh=True)):
            member = self.by_name.get(name)
            if member is None or not accounts.probe_due(self.client, name, self.settings.account_probe_seconds):
                continue
            permit = f"probe:{name}:{time.time_ns()}"
            decision = member.limiter.acquire(
                model=PROBE_MODEL,
                tenant="_probe",
                tokens=PROBE_TOKENS,
                model_limits=member.model_limits(PROBE_MODEL),
                permit_id=permit,
            )
            if not decision.granted:
                continue
            verdict = check_format(
                client=http,
                fmt="anthropic",
                base_url=member.account.base_url,
                api_key=member.account.api_key,
                model=PROBE_MODEL,
            )
            member.limiter.release(permit, tenant="_probe")
            said = verdict.summary
            refused = verdict.status == "fail" and ("key was refused" in said or "balance" in said)
            unreachable = verdict.status == "fail" and "cannot reach" in verdict.summary
            back = not refused and not unreachable
            if back:
                accounts.bring_back(self.client, name)
            else:
                log.info("upstream account %s still out: %s", name, verdict.summary)
            results[name] = back
        self._out_read = -math.inf
        return results

    def tenant_snapshots(self) -> dict[str, dict[str, Any]]:
        """Per tenant with its own key: its account's use per model (shown to that tenant only)."""
        return {
            tenant_id: {model: m.limiter.snapshot(model, model_limits=m.model_limits(model)) for model in m.limits}
            for tenant_id, m in self.tenants.items()
        }

    def snapshots(self) -> list[dict[str, Any]]:
        """Per account: its rotation state, weight, host, and per model its limits and use in the window."""
        names = [m.name for m in self.members]
        state = accounts.states(self.client, names) if self.multi else {}
        result = []
        for member in self.members:
            s = state.get(member.name)
            models = {
                model: member.limiter.snapshot(model, model_limits=member.model_limits(model))
                for model in member.limits
            }
            result.append(
                {
                    "name": member.name,
                    "base_url": member.account.base_url,
                    "weight": member.account.weight,
                    "in_rotation": s.in_rotation if s else True,
                    "since": s.since if s else None,
                    "last_error": ({"code": s.code, "message": s.error} if s and not s.in_rotation else None),
                    "left_rotation": s.left if s else 0,
                    "returned": s.returned if s else 0,
                    "models": models,
                }
            )
        return result
