"""Several upstream MiniMax accounts (issue 17 part 2): which account each attempt runs on, and which accounts are
in the rotation.

The accounts themselves are configured (`Settings.accounts()`, MMJOBS_UPSTREAM_ACCOUNTS); what changes at run time
lives in Redis, shared by every scheduler and worker process:

- `mmjobs:acct:state:<name>`: a hash, `state` (`in` or `out`), `since` (epoch seconds), `code` and `error` (the
  answer that took it out), `transitions` (how many times it left or came back). No hash: in rotation.
- `mmjobs:acct:permit:<job>:<attempt>`: the account the dispatcher acquired that attempt's permit on; the worker
  calls with that account's key and base URL and settles that account's limiter. Kept a day (an attempt is
  claimed within seconds of its dispatch, or re-dispatched under a new permit of the same id).

An account leaves the rotation when MiniMax answers it 1004 (not authorized), 2049 (invalid key) or 1008
(insufficient balance): the account is at fault, not the request, so the job is tried again on another account.
The scheduler probes an account out of the rotation every `account_probe_seconds` with a one-token call; the
first answer that is not one of those codes brings it back.

A tenant's own key that a worker finds unusable is held, not taken out of a rotation (it has none):

- `mmjobs:acct:tenantkey:<tenant id>`: JSON `{"why", "code", "message", "version", "since", "probe_every"}`. While
  it exists for the key's current version, the dispatcher holds that tenant's jobs (wait reason `tenant_key`)
  instead of sending them anywhere. `why` is `undecryptable` (the worker's MMJOBS_SECRET_KEY does not open it: the
  scheduler never decrypts, so only a worker can find this out) or `refused` (MiniMax answered the key 1004, 2049
  or 1008; `code` says which).

The key is probed back without the scheduler ever holding it: every `probe_every` seconds the dispatcher lets one of
the tenant's jobs through (`probe_due` on `tenant.<id>`), and the worker whose call on the key succeeds lifts the
hold; failing again, that job is handed back like the others and the hold stays. Setting the key again (a new
version) lifts it at once.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger("mmjobs.accounts")

# The codes by which MiniMax says the account (not the request) is at fault (reference/minimax-api.md, "Errors").
ACCOUNT_CODES = frozenset({1004, 2049, 1008})
IN, OUT = "in", "out"
PERMIT_MEMORY_SECONDS = 24 * 3600
_STATE = "mmjobs:acct:state:"
_PERMIT = "mmjobs:acct:permit:"
_PROBED = "mmjobs:acct:probed:"
_TENANT_HOLD = "mmjobs:acct:tenantkey:"
TENANT_ACCOUNT_PREFIX = "tenant."  # a tenant's own account's name (service/accounts/tenant_keys.py account_name)


def public_name(name: str | None) -> str | None:
    """A recorded account (an attempt's, a ledger row's) as its tenant sees it: `own_key` for the tenant's own key
    (the stored name carries the tenant id), else the shared account's name as GET /v1/limits lists it, None for
    the single configured key."""
    if name is not None and name.startswith(TENANT_ACCOUNT_PREFIX):
        return "own_key"
    return name


# How often a tenant's undecryptable key is tried again (one job let through): a fixed secret is picked up after at
# most this long. A refused key is tried every `account_probe_seconds`, like a shared account out of the rotation.
UNDECRYPTABLE_PROBE_SECONDS = 120.0
# A hold lasts until a probe succeeds; this only bounds what a key removed meanwhile leaves in Redis.
HOLD_SECONDS = 24 * 3600.0
# Lift a hold set before the call that just succeeded was sent (not one set since: the key may have failed since).
_RELEASE_IF_OLDER = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local ok, body = pcall(cjson.decode, raw)
if ok and tonumber(body['since'] or 0) < tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# Set the state only if it changes, and count the change: KEYS[1] the hash; ARGV: state, now, code, error.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'state')
if (current or 'in') == ARGV[1] then
  if ARGV[1] == 'out' then redis.call('HSET', KEYS[1], 'last_code', ARGV[3], 'last_error', ARGV[4]) end
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'since', ARGV[2])
if ARGV[1] == 'out' then
  redis.call('HSET', KEYS[1], 'code', ARGV[3], 'error', ARGV[4], 'last_code', ARGV[3], 'last_error', ARGV[4])
end
redis.call('HINCRBY', KEYS[1], 'transitions_' .. ARGV[1], 1)
return 1
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class AccountState:
    name: str
    in_rotation: bool
    since: float | None
    code: int | None
    error: str | None
    left: int  # times it left the rotation
    returned: int  # times it came back


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def permit_key(permit: str) -> str:
    return _PERMIT + permit


def record_choice(client: redis.Redis, permit: str, account: str) -> None:
    client.set(permit_key(permit), account, ex=PERMIT_MEMORY_SECONDS)


def chosen(client: redis.Redis, permit: str) -> str | None:
    """The account an attempt's permit was acquired on, or None (not recorded: the single account)."""
    value = client.get(permit_key(permit))
    return None if value is None else _text(value)


def _transition(client: redis.Redis, name: str, state: str, *, code: int | None = None, error: str = "") -> bool:
    changed = client.eval(_TRANSITION, 1, _STATE + name, state, repr(time.time()), str(code or ""), error[:500])
    return bool(int(changed))


def take_out(client: redis.Redis, name: str, *, code: int | None, error: str) -> bool:
    """The account answered 1004/2049/1008: out of the rotation. True if this call took it out (logged once)."""
    changed = _transition(client, name, OUT, code=code, error=error)
    if changed:
        log.warning(
            "upstream account %s left the rotation: MiniMax answered %s (%s); probing it every while",
            name,
            code,
            error[:200],
            extra={"event": "upstream_account.out", "account": name, "minimax_code": code},
        )
    return changed


def bring_back(client: redis.Redis, name: str) -> bool:
    """The account answered again: back in the rotation. True if it was out."""
    changed = _transition(client, name, IN)
    if changed:
        log.warning(
            "upstream account %s is back in the rotation: it answered again",
            name,
            extra={"event": "upstream_account.in", "account": name},
        )
    return changed


@dataclass(frozen=True, kw_only=True, slots=True)
class TenantKeyHold:
    why: str  # undecryptable, refused
    code: int | None
    message: str
    version: str  # the key version found unusable (service/accounts/tenant_keys.py `version`)
    since: float
    probe_every: float  # seconds between the jobs let through to try the key again


def hold_tenant_key(
    client: redis.Redis,
    tenant_id: str,
    *,
    why: str,
    message: str,
    version: str,
    probe_every: float,
    code: int | None = None,
) -> None:
    """Hold the tenant's jobs: its own key cannot be used (see the module docstring). The first probe (one job let
    through) comes `probe_every` seconds from now, not at once."""
    body = {
        "why": why,
        "code": code,
        "message": message[:500],
        "version": version,
        "since": time.time(),
        "probe_every": probe_every,
    }
    pipe = client.pipeline(transaction=False)
    pipe.set(_TENANT_HOLD + tenant_id, json.dumps(body), px=int(HOLD_SECONDS * 1000))
    pipe.set(_PROBED + TENANT_ACCOUNT_PREFIX + tenant_id, "1", px=max(1, int(probe_every * 1000)))
    pipe.execute()
    log.warning(
        "the own MiniMax key of tenant %s is unusable (%s); its jobs wait, one tried every %.0fs: %s",
        tenant_id,
        why if code is None else f"{why}, MiniMax {code}",
        probe_every,
        message[:200],
        extra={"event": "tenant_key.held", "tenant": tenant_id, "minimax_code": code},
    )


def tenant_key_holds(client: redis.Redis, tenant_ids: list[str]) -> dict[str, TenantKeyHold]:
    """The holds in force, by tenant id (one round trip)."""
    if not tenant_ids:
        return {}
    raws = client.mget([_TENANT_HOLD + t for t in tenant_ids])
    result: dict[str, TenantKeyHold] = {}
    for tenant_id, raw in zip(tenant_ids, raws, strict=True):
        if raw is None:
            continue
        try:
            body = json.loads(_text(raw))
        except ValueError:
            continue
        result[tenant_id] = TenantKeyHold(
            why=str(body.get("why") or "unusable"),
            code=body.get("code"),
            message=str(body.get("message") or ""),
            version=str(body.get("version") or ""),
            since=float(body.get("since") or 0.0),
            probe_every=float(body.get("probe_every") or UNDECRYPTABLE_PROBE_SECONDS),
        )
    return result


def release_tenant_key(client: redis.Redis, tenant_id: str, *, set_before: float) -> bool:
    """A call on the tenant's own key, sent at `set_before` (epoch seconds), succeeded: lift a hold set before it.
    True if one was lifted."""
    lifted = bool(int(client.eval(_RELEASE_IF_OLDER, 1, _TENANT_HOLD + tenant_id, repr(set_before))))
    if lifted:
        log.warning(
            "the own MiniMax key of tenant %s answered again: its jobs run",
            tenant_id,
            extra={"event": "tenant_key.released", "tenant": tenant_id},
        )
    return lifted


def states(client: redis.Redis, names: list[str]) -> dict[str, AccountState]:
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_STATE + name)
    result: dict[str, AccountState] = {}
    for name, raw in zip(names, pipe.execute(), strict=True):
        fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
        out = fields.get("state") == OUT
        result[name] = AccountState(
            name=name,
            in_rotation=not out,
            since=float(fields["since"]) if fields.get("since") else None,
            code=int(fields["code"]) if out and fields.get("code") else None,
            error=fields.get("error") if out else None,
            left=int(fields.get("transitions_out", 0)),
            returned=int(fields.get("transitions_in", 0)),
        )
    return result


def out_of_rotation(client: redis.Redis, names: list[str]) -> set[str]:
    return {name for name, state in states(client, names).items() if not state.in_rotation}


def probe_due(client: redis.Redis, name: str, every: float) -> bool:
    """True for one process once per `every` seconds per account (the scheduler may run several times)."""
    return bool(client.set(_PROBED + name, "1", nx=True, px=max(1, int(every * 1000))))


def metric_families(client: redis.Redis, names: list[str]) -> list[Any]:
    """`mmjobs_upstream_account_in_rotation{account}` (1/0) and
    `mmjobs_upstream_account_transitions_total{account,to}` (to: out, in), for GET /metrics."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    gauge = GaugeMetricFamily(
        "mmjobs_upstream_account_in_rotation",
        "1 while the upstream account is in the rotation, 0 while MiniMax refuses it (1004, 2049, 1008)",
        labels=["account"],
    )
    counter = CounterMetricFamily(
        "mmjobs_upstream_account_transitions",
        "Times an upstream account left (to=out) or came back into (to=in) the rotation",
        labels=["account", "to"],
    )
    for name, state in states(client, names).items():
        gauge.add_metric([name], 1 if state.in_rotation else 0)
        counter.add_metric([name, OUT], state.left)
        counter.add_metric([name, IN], state.returned)
    return [gauge, counter]
