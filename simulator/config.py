"""Simulator settings: one pydantic-settings class, environment prefix ``MMJOBS_SIM_``.

Every field also accepts the compact string form used on the command line and in the environment
(``latency="0.5-2"``, ``faults="429=0.1,midstream=0.05"``, ``api_keys="sk-a,sk-b"``), so tests can write
``SimulatorConfig(faults="500=1")`` as readily as an operator writes ``MMJOBS_SIM_FAULTS=500=1``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FaultKind = Literal["429", "500", "529", "base_resp", "midstream", "hang"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


class Latency(NamedTuple):
    """Total duration of a call in seconds, drawn uniformly from ``[low, high]``."""

    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}-{self.high:g}"


def parse_latency(value: object) -> object:
    """Accept ``"MIN"``, ``"MIN-MAX"``, a number, or a ``(min, max)`` pair."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _checked_latency(float(value), float(value), repr(value))
    if isinstance(value, str):
        text = value.strip()
        parts = text.split("-") if text else []
        try:
            numbers = [float(part) for part in parts]
        except ValueError:
            numbers = []
        if len(numbers) not in (1, 2):
            raise ValueError(f"latency must be 'MIN' or 'MIN-MAX' in seconds (e.g. '0.5-2'), got {value!r}")
        return _checked_latency(numbers[0], numbers[-1], repr(value))
    if isinstance(value, list | tuple) and len(value) == 2:
        return _checked_latency(float(value[0]), float(value[1]), repr(value))
    return value


def _checked_latency(low: float, high: float, shown: str) -> Latency:
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high < low:
        raise ValueError(f"latency needs 0 <= MIN <= MAX, got {shown}")
    return Latency(low, high)


def parse_faults(value: object) -> object:
    """Accept ``"KIND=RATE,KIND=RATE"`` (empty string for none) or a mapping ``{kind: rate}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        pairs: dict[str, object] = {}
        for item in value.replace(";", ",").split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, text_rate = item.partition("=")
            if not sep:
                raise ValueError(f"fault must be KIND=RATE (e.g. '429=0.1'), got {item!r}")
            pairs[name.strip()] = text_rate.strip()
        value = pairs
    if not isinstance(value, dict):
        raise ValueError(f"faults must be 'KIND=RATE,...' or a mapping, got {value!r}")
    faults: dict[str, float] = {}
    for raw_kind, raw_rate in value.items():
        kind = str(raw_kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        try:
            rate = float(raw_rate)
        except (TypeError, ValueError):
            raise ValueError(f"fault rate for {kind} must be a number in [0, 1], got {raw_rate!r}") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate for {kind} must be in [0, 1], got {rate:g}")
        faults[kind] = rate
    if sum(faults.values()) > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {sum(faults.values()):g}; they must add up to at most 1")
    return faults


def parse_limit(value: object) -> object:
    """``None``, ``""``, ``"none"`` and ``"unlimited"`` all mean no limit."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "unlimited"):
        return None
    return value


def parse_keys(value: object) -> object:
    if isinstance(value, str):
        return tuple(key.strip() for key in value.split(",") if key.strip())
    return value


LatencyField = Annotated[Latency, NoDecode, BeforeValidator(parse_latency)]
FaultsField = Annotated[dict[FaultKind, float], NoDecode, BeforeValidator(parse_faults)]
LimitField = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(parse_limit)]


class SimulatorConfig(BaseSettings):
    """How the simulator behaves. Frozen: the running app swaps in a new copy on ``POST /_sim/config``."""

    model_config = SettingsConfigDict(env_prefix="MMJOBS_SIM_", frozen=True, extra="forbid")

    latency: LatencyField = Latency(0.0, 0.0)
    rpm: LimitField = None
    tpm: LimitField = None
    faults: FaultsField = Field(default_factory=dict)
    base_resp_code: int = 1000
    api_keys: Annotated[tuple[str, ...], NoDecode, BeforeValidator(parse_keys)] = ("sk-simulator",)
    output_tokens: int = Field(default=48, ge=1)
    seed: int | None = None

    @field_validator("api_keys")
    @classmethod
    def _at_least_one_key(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        if not keys:
            raise ValueError("api_keys needs at least one key")
        return keys

    @field_validator("base_resp_code")
    @classmethod
    def _nonzero_code(cls, code: int) -> int:
        if code == 0:
            raise ValueError("base_resp_code 0 means success; pick an error code such as 1000 or 1039")
        return code

    def describe(self) -> dict[str, Any]:
        """The settings in their compact string forms, as ``GET /_sim/config`` shows them."""
        return {
            "latency": str(self.latency),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "faults": ",".join(f"{kind}={rate:g}" for kind, rate in self.faults.items()),
            "base_resp_code": self.base_resp_code,
            "api_keys": len(self.api_keys),
            "output_tokens": self.output_tokens,
            "seed": self.seed,
        }


class ConfigPatch(BaseModel):
    """Body of ``POST /_sim/config``: the fields a test may change while the simulator runs."""

    model_config = ConfigDict(extra="forbid")

    latency: LatencyField | None = None
    rpm: LimitField = None
    tpm: LimitField = None
    faults: FaultsField | None = None
    base_resp_code: int | None = None
    output_tokens: int | None = Field(default=None, ge=1)

    def apply(self, config: SimulatorConfig) -> SimulatorConfig:
        """A new config with the fields this patch set; ``rpm``/``tpm`` set to null lift the limit."""
        changes = self.model_dump(exclude_unset=True)
        merged = {name: getattr(config, name) for name in SimulatorConfig.model_fields}
        merged.update({key: value for key, value in changes.items() if value is not None or key in ("rpm", "tpm")})
        # Re-validating the whole config reuses its checks (e.g. base_resp_code != 0); explicit values beat
        # the environment, so the process's MMJOBS_SIM_* variables cannot leak back in.
        return SimulatorConfig(**merged)
