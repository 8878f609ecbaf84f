"""The rate limiter every worker and scheduler process shares (DESIGN.md decision 5).

A sliding-window log in Redis per (upstream account, model) and per tenant: over any 60-second window the
requests and tokens admitted never exceed the limits, whatever the number of processes and hosts, because every
decision is one Lua script call on one clock (Redis TIME). Unlike a fixed window counted after the response
(LiteLLM), tokens are reserved at admission and settled to the truth afterwards, so concurrent first requests
cannot overshoot and a window boundary cannot admit two windows' worth at once.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import redis

from workers.limiter import scripts
from workers.limiter.values import AdaptivePolicy, Decision, Limits

WINDOW_SECONDS = 60.0
# How long a duplicate settle of the same permit is recognised (settles are retried within seconds, not hours).
SETTLED_MEMORY_SECONDS = 600.0
# retry_after for a full concurrency cap: a release may free a slot any moment, unlike an ageing log.
CONCURRENCY_POLL_SECONDS = 1.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _arg(value: float | None) -> str:
    # repr() of a float round-trips exactly, so the script sees the very number the test injected.
    return "" if value is None else repr(float(value))


def _limit(value: int | None) -> str:
    return "" if value is None else str(int(value))


def _segment(name: str) -> str:
    # ':' separates key parts and braces would change the cluster hash tag: escape them so that two
    # different (account, model) or tenant names can never share a key.
    for char, code in (("%", "%25"), (":", "%3A"), ("{", "%7B"), ("}", "%7D")):
        name = name.replace(char, code)
    return name


def _retry_after(seconds: float) -> float:
    """Round up to the next millisecond (plus one) so that ``now + retry_after`` is past the boundary even
    after float rounding: waiting exactly this long and retrying must succeed."""
    if math.isinf(seconds):
        return math.inf
    return math.ceil(seconds * 1000 + 1) / 1000


class RateLimiter:
    """Shared RPM/TPM limits per (account, model), RPM/TPM/concurrency per tenant, with adaptive back-off."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        account: str = "default",
        prefix: str = "mmjobs:rl",
        window_seconds: float = WINDOW_SECONDS,
        adaptive: AdaptivePolicy | None = None,
    ) -> None:
        """``window_seconds`` is 60 to match the upstream; a little more (e.g. 61) absorbs the network delay
        between our admission and the upstream's, at the cost of ~2 % throughput."""
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        self.client = client
        self.account = account
        self.window = float(window_seconds)
        self.adaptive = adaptive or AdaptivePolicy()
        # One hash tag for every key: a Redis Cluster keeps them on one shard, as multi-key scripts require.
        self._base = "{" + prefix.replace("{", "").replace("}", "") + "}"
        self._acquire = client.register_script(scripts.ACQUIRE)
        self._settle = client.register_script(scripts.SETTLE)
        self._extend = client.register_script(scripts.EXTEND)
        self._forfeit = client.register_script(scripts.FORFEIT)
        self._mark_sent = client.register_script(scripts.MARK_SENT)
        self._penalize = client.register_script(scripts.PENALIZE)
        self._snapshot = client.register_script(scripts.SNAPSHOT)
        self._tenant_snapshot = client.register_script(scripts.TENANT_SNAPSHOT)

    # Keys -----------------------------------------------------------------------------------------------

    def _model_key(self, model: str) -> str:
        return f"{self._base}:m:{_segment(self.account)}:{_segment(model)}"

    def _model_keys(self, model: str) -> list[str]:
        base = self._model_key(model)
        return [f"{base}:req", f"{base}:tok", f"{base}:amt", f"{base}:adapt"]

    def _tenant_keys(self, tenant: str) -> list[str]:
        # Tenant limits span every upstream account and model, so the account is not part of the key.
        base = f"{self._base}:t:{_segment(tenant)}"
        return [f"{base}:req", f"{base}:tok", f"{base}:amt", f"{base}:inflight"]

    # Operations -----------------------------------------------------------------------------------------

    def acquire(
        self,
        *,
        model: str,
        tenant: str,
        tokens: int,
        model_limits: Limits,
        tenant_limits: Limits | None = None,
        permit_id: str | None = None,
        hold_seconds: float = 600,
        now: float | None = None,
    ) -> Decision:
        """Admit one upstream call reserving ``tokens`` on every dimension at once, or refuse it and say why
        and for how long. A grant also holds a tenant concurrency slot until ``release`` or ``hold_seconds``.

        ``permit_id`` must be unique per upstream call; acquiring again with the id of a grant still in the
        window returns that grant and consumes nothing (safe to retry after a lost reply).
        """
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        if hold_seconds <= 0:
            raise ValueError("hold_seconds must be positive")
        permit = permit_id or uuid.uuid4().hex
        tl = tenant_limits or Limits()
        granted, reason, retry_after, at = self._acquire(
            keys=[*self._model_keys(model), *self._tenant_keys(tenant)],
            args=[
                _arg(now),
                permit,
                str(int(tokens)),
                _limit(model_limits.rpm),
                _limit(model_limits.tpm),
                _limit(tl.rpm),
                _limit(tl.tpm),
                _limit(tl.concurrency),
                _arg(hold_seconds),
                _arg(self.window),
                _arg(self.adaptive.recovery_per_second),
                _arg(CONCURRENCY_POLL_SECONDS),
            ],
        )
        if int(granted):
            return Decision(granted=True, permit_id=permit, retry_after=0.0, reason=None, at=float(_text(at)))
        return Decision(
            granted=False,
            permit_id=permit,
            retry_after=_retry_after(float(_text(retry_after))),
            reason=_text(reason),
            at=float(_text(at)),
        )

    def settle(
        self,
        permit_id: str,
        *,
        model: str,
        tenant: str,
        input_tokens: int,
        output_tokens: int,
        now: float | None = None,
        release: bool = False,
    ) -> None:
        """Replace a grant's reservation with the real usage: input at the admission time, output now.
        `release`: the call is over, free the tenant concurrency slot in the same round trip (`release`).

        Idempotent. Never settling is safe: the reservation simply stays until it leaves the window.
        """
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts must not be negative")
        m_req, m_tok, m_amt, _ = self._model_keys(model)
        t_req, t_tok, t_amt, t_inflight = self._tenant_keys(tenant)
        marker = f"{self._model_key(model)}:settled:{_segment(permit_id)}"
        memory_ms = int(max(SETTLED_MEMORY_SECONDS, 2 * self.window) * 1000)
        self._settle(
            keys=[m_req, m_tok, m_amt, t_req, t_tok, t_amt, marker, *([t_inflight] if release else [])],
            args=[
                _arg(now),
                permit_id,
                str(int(input_tokens)),
                str(int(output_tokens)),
                _arg(self.window),
                str(memory_ms),
            ],
        )

    def mark_sent(self, permit_id: str, *, model: str, tenant: str, now: float | None = None) -> None:
        """The granted call is being sent now: its entries count from now on (they only ever move later)."""
        m_req, m_tok, _, _ = self._model_keys(model)
        t_req, t_tok, _, _ = self._tenant_keys(tenant)
        self._mark_sent(keys=[m_req, m_tok, t_req, t_tok], args=[_arg(now), permit_id])

    def release(self, permit_id: str, *, tenant: str) -> None:
        """Free the tenant concurrency slot at once (the call is over). Harmless if already freed."""
        self.client.zrem(self._tenant_keys(tenant)[3], permit_id)

    def forfeit(self, permit_id: str, *, model: str, tenant: str) -> None:
        """Give a grant back whole: its call will never be made (the job ended before anyone claimed it). Its
        request, reserved input and concurrency slot are free at once, not when they leave the window."""
        m_req, m_tok, m_amt, _ = self._model_keys(model)
        self._forfeit(keys=[m_req, m_tok, m_amt, *self._tenant_keys(tenant)], args=[permit_id])

    def extend(self, permit_id: str, *, tenant: str, hold_seconds: float, now: float | None = None) -> bool:
        """Keep holding the concurrency slot for ``hold_seconds`` from now (a long call still streaming).

        Returns False if the lease had already lapsed or been released: the slot is not taken back.
        """
        if hold_seconds <= 0:
            raise ValueError("hold_seconds must be positive")
        result = self._extend(keys=[self._tenant_keys(tenant)[3]], args=[_arg(now), permit_id, _arg(hold_seconds)])
        return bool(int(result))

    def extend_many(
        self, permits: list[tuple[str, str]], *, hold_seconds: float, now: float | None = None, chunk: int = 500
    ) -> None:
        """`extend` for many (permit_id, tenant) pairs, pipelined `chunk` at a time (one round trip each)."""
        if hold_seconds <= 0:
            raise ValueError("hold_seconds must be positive")
        for start in range(0, len(permits), chunk):
            pipe = self.client.pipeline(transaction=False)
            for permit_id, tenant in permits[start : start + chunk]:
                self._extend(
                    keys=[self._tenant_keys(tenant)[3]], args=[_arg(now), permit_id, _arg(hold_seconds)], client=pipe
                )
            pipe.execute()

    def penalize(self, model: str, *, now: float | None = None) -> None:
        """The upstream still said "too fast" (429, 1002, 1039, 1041, 2045): lower this key's effective rate.

        Penalties within the cooldown of the last counted one are the same burst and count once.
        """
        policy = self.adaptive
        self._penalize(
            keys=[self._model_keys(model)[3]],
            args=[
                _arg(now),
                _arg(policy.decrease),
                _arg(policy.floor),
                _arg(policy.recovery_per_second),
                _arg(policy.cooldown_seconds),
            ],
        )

    def snapshot(self, model: str, *, model_limits: Limits, now: float | None = None) -> dict[str, Any]:
        """Configured and effective limits of an (account, model) key and its use over the current window."""
        requests, tokens, eff_rpm, eff_tpm, factor, penalized_at, at = (
            _text(v)
            for v in self._snapshot(
                keys=self._model_keys(model),
                args=[
                    _arg(now),
                    _limit(model_limits.rpm),
                    _limit(model_limits.tpm),
                    _arg(self.window),
                    _arg(self.adaptive.recovery_per_second),
                ],
            )
        )
        return {
            "model": model,
            "account": self.account,
            "configured": {"rpm": model_limits.rpm, "tpm": model_limits.tpm},
            "effective": {"rpm": int(eff_rpm) if eff_rpm else None, "tpm": int(eff_tpm) if eff_tpm else None},
            "factor": float(factor),
            "used": {"requests": int(requests), "tokens": int(tokens)},
            "penalized_at": float(penalized_at) if penalized_at else None,
            "at": float(at),
        }

    def tenant_snapshot(self, tenant: str, *, tenant_limits: Limits, now: float | None = None) -> dict[str, Any]:
        """A tenant's limits and its use: requests and tokens over the current window, calls in flight."""
        requests, tokens, in_flight, at = (
            _text(v) for v in self._tenant_snapshot(keys=self._tenant_keys(tenant), args=[_arg(now), _arg(self.window)])
        )
        return {
            "tenant": tenant,
            "configured": {
                "rpm": tenant_limits.rpm,
                "tpm": tenant_limits.tpm,
                "concurrency": tenant_limits.concurrency,
            },
            "used": {"requests": int(requests), "tokens": int(tokens), "in_flight": int(in_flight)},
            "at": float(at),
        }
