"""Request rates at the door, per tenant and per API key: one atomic Lua call to Redis per authenticated request
(GCRA), never a database query. A request over either rate gets 429 with `Retry-After` and the IETF RateLimit
fields; every other authenticated response carries the RateLimit fields too.

The fields follow draft-ietf-httpapi-ratelimit-headers-10/11 (the structured-field form, not the older
`RateLimit-Limit` / `-Remaining` / `-Reset` trio):

    RateLimit-Policy: "tenant";q=400;w=10, "key";q=200;w=10
    RateLimit: "tenant";r=399;t=1, "key";r=0;t=10

`q` requests per `w` seconds is the burst each policy allows at once; it refills at the configured requests per
minute. `r` is how many requests that policy still admits now, `t` the seconds until its quota is whole again.

This is the intake's own small limiter; the upstream (MiniMax) limiter that the scheduler uses lives in
workers/limiter/ and shares nothing with it but the Redis server.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import redis
from fastapi import Request
from redis.commands.core import Script
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import APIError
from service.config import Settings
from service.limits import policy
from service.models import ApiKey

log = logging.getLogger("mmjobs.limits")
STATE_KEY = "mmjobs_rate_limit"  # where the decision waits in the ASGI scope's state for the header middleware

# KEYS: one Redis key per policy. ARGV: per policy, the emission interval and the burst window, in microseconds.
# Each key holds its policy's theoretical arrival time (TAT). The request is admitted only if every policy admits
# it, and only then does any TAT move: a request refused by the tenant's rate costs its key nothing, and the
# other way round. Redis's own clock is used, so API processes with skewed clocks agree.
# Returns {refused, retry_after_us, remaining_1, reset_us_1, remaining_2, reset_us_2, ...}.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local refused = 0
local retry = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allow_at = tat + interval - window
  if allow_at > now then
    refused = 1
    if allow_at - now > retry then retry = allow_at - now end
  end
  tats[i] = tat
end
local out = {refused, retry}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local tat = tats[i]
  if refused == 0 then
    tat = tat + interval
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local remaining = math.floor((now + window - tat) / interval)
  if remaining < 0 then remaining = 0 end
  table.insert(out, remaining)
  table.insert(out, tat - now)
end
return out
"""


_script: Script | None = None


@dataclass(frozen=True, kw_only=True)
class Quota:
    policy: str  # "tenant" or "key"
    quota: int  # q: requests admitted at once
    window: int  # w: seconds over which q refills
    remaining: int  # r
    reset: int  # t: seconds until the quota is whole again


@dataclass(frozen=True, kw_only=True)
class Decision:
    allowed: bool
    retry_after: int  # whole seconds, at least 1 when refused
    quotas: tuple[Quota, ...]

    def headers(self) -> list[tuple[str, str]]:
        out = [
            ("RateLimit-Policy", ", ".join(f'"{q.policy}";q={q.quota};w={q.window}' for q in self.quotas)),
            ("RateLimit", ", ".join(f'"{q.policy}";r={q.remaining};t={q.reset}' for q in self.quotas)),
        ]
        if not self.allowed:
            out.append(("Retry-After", str(self.retry_after)))
        return out


@dataclass(frozen=True, kw_only=True)
class Rate:
    policy: str
    key: str  # the Redis key
    per_minute: int
    burst_seconds: float

    @property
    def interval_us(self) -> int:
        return max(1, round(60_000_000 / self.per_minute))

    @property
    def quota(self) -> int:
        return max(1, math.floor(self.per_minute * self.burst_seconds / 60))

    @property
    def window_us(self) -> int:
        return self.quota * self.interval_us


def rates(key: ApiKey, settings: Settings) -> list[Rate]:
    """The rates that apply to a request made with `key` (none when both are unlimited)."""
    limits = policy.for_tenant(key.tenant, settings)
    burst = settings.request_burst_seconds
    out = []
    if limits.requests_per_minute.value:
        out.append(Rate(policy="tenant", key=f"mmjobs:intake:tenant:{key.tenant_id}",
                        per_minute=limits.requests_per_minute.value, burst_seconds=burst))  # fmt: skip
    if limits.key_requests_per_minute.value:
        out.append(Rate(policy="key", key=f"mmjobs:intake:key:{key.id}",
                        per_minute=limits.key_requests_per_minute.value, burst_seconds=burst))  # fmt: skip
    return out


def take(client: redis.Redis, chosen: list[Rate]) -> Decision:
    """Spend one request against every rate in `chosen`, atomically; refused if any is spent."""
    args: list[int] = []
    for r in chosen:
        args += [r.interval_us, r.window_us]
    global _script
    if _script is None:  # EVALSHA from then on, with the script sent again only if Redis has lost it
        _script = client.register_script(GCRA)
    reply: list[Any] = _script(keys=[r.key for r in chosen], args=args, client=client)
    refused, retry_us = int(reply[0]), int(reply[1])
    quotas = tuple(
        Quota(
            policy=r.policy,
            quota=r.quota,
            window=max(1, round(r.window_us / 1_000_000)),
            remaining=int(reply[2 + 2 * i]),
            reset=math.ceil(int(reply[3 + 2 * i]) / 1_000_000),
        )
        for i, r in enumerate(chosen)
    )
    return Decision(allowed=not refused, retry_after=max(1, math.ceil(retry_us / 1_000_000)), quotas=quotas)


def check(request: Request, key: ApiKey) -> None:
    """Count this request against its tenant's and key's rates; raise 429 when over either. Redis being down
    lets the request through (logged): intake must not stop because the counters are out of reach."""
    settings: Settings = request.app.state.settings
    chosen = rates(key, settings)
    if not chosen:
        return
    try:
        decision = take(request.app.state.redis, chosen)
    except redis.RedisError as exc:
        log.warning("intake rate limit not applied: Redis unavailable (%s)", exc)
        return
    request.state.mmjobs_rate_limit = decision  # STATE_KEY, for RateLimitHeaders
    if not decision.allowed:
        over = [q.policy for q in decision.quotas if q.remaining == 0]
        which = " and ".join(f"{p} (requests_per_minute)" if p == "tenant" else f"{p} (key_requests_per_minute)"
                             for p in over) or "tenant"  # fmt: skip
        raise APIError(
            429,
            "rate_limited",
            f"too many requests: over the rate for your {which}; retry in {decision.retry_after} s "
            "(see the RateLimit and RateLimit-Policy headers, and GET /v1/limits)",
        )


class RateLimitHeaders:
    """Adds the RateLimit fields (and Retry-After on a refusal) to responses of requests that were counted.
    Pure ASGI: it only reads the decision `check` left in the request's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # shared with every Request built from this scope

        async def send_with_headers(message: Message) -> None:
            decision = state.get(STATE_KEY)
            if message["type"] == "http.response.start" and isinstance(decision, Decision):
                names = {name.lower() for name, _ in decision.headers()}
                headers = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in names]
                headers += [(k.lower().encode(), v.encode()) for k, v in decision.headers()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
