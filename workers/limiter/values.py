"""The limiter's value types and the parser for the ``MMJOBS_RATE_LIMITS`` setting."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Why a request was refused, one per dimension the limiter checks.
REASONS = ("rpm", "tpm", "tenant_rpm", "tenant_tpm", "tenant_concurrency")


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Limits of one dimension; ``None`` means unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        # A zero or negative limit can never admit anything: refuse it here, not as a silent deadlock later.
        for name in ("rpm", "tpm", "concurrency"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    granted: bool
    permit_id: str
    # 0 when granted; else seconds until this request could fit (math.inf: it never can).
    retry_after: float
    # None when granted, else one of REASONS.
    reason: str | None
    # The limiter's clock (Redis TIME, or the injected ``now``) when it decided; the log timestamp of a grant.
    at: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class AdaptivePolicy:
    """How the effective rate of an (account, model) key follows upstream 429s (AIMD-like)."""

    decrease: float = 0.8  # each counted penalty multiplies the effective rate by this
    floor: float = 0.1  # never below this share of the configured rate
    recovery_per_second: float = 0.005  # +5 % of configured per 10 s without a new penalty
    cooldown_seconds: float = 2.0  # penalties closer than this to the last counted one are the same burst

    def __post_init__(self) -> None:
        if not 0 < self.decrease <= 1 or not 0 < self.floor <= 1:
            raise ValueError("decrease and floor must be in (0, 1]")
        if self.recovery_per_second < 0 or self.cooldown_seconds < 0:
            raise ValueError("recovery_per_second and cooldown_seconds must not be negative")


_MODEL_FIELDS = ("rpm", "tpm")


def parse_rate_limits(json_text: str) -> dict[str, Limits]:
    """Parse ``MMJOBS_RATE_LIMITS``: ``{"<model>": {"rpm": int | null, "tpm": int | null}}``.

    ``null`` (or an absent field) means unlimited. Blank text means no overrides. Raises ValueError naming the
    model and field at fault.
    """
    if not json_text.strip():
        return {}
    try:
        data: Any = json.loads(json_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MMJOBS_RATE_LIMITS is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError('MMJOBS_RATE_LIMITS must be a JSON object like {"MiniMax-M2.7": {"rpm": 500}}')
    result: dict[str, Limits] = {}
    for model, fields in data.items():
        if not model.strip():
            raise ValueError("MMJOBS_RATE_LIMITS: a model name is empty")
        if not isinstance(fields, dict):
            raise ValueError(
                f"MMJOBS_RATE_LIMITS: model {model!r} must map to an object with 'rpm' and/or 'tpm', got {fields!r}"
            )
        values: dict[str, int | None] = {}
        for field, value in fields.items():
            if field not in _MODEL_FIELDS:
                raise ValueError(
                    f"MMJOBS_RATE_LIMITS: model {model!r} has unknown field {field!r} (expected 'rpm' or 'tpm')"
                )
            # bool is an int in Python, and true/false as a limit is surely a mistake.
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(
                    f"MMJOBS_RATE_LIMITS: model {model!r} field {field!r} must be a positive integer or null, "
                    f"got {value!r}"
                )
            values[field] = value
        result[model] = Limits(rpm=values.get("rpm"), tpm=values.get("tpm"))
    return result
