"""Cost in USD from token counts: the catalog's price table, overridable by the operator without code.

`MMJOBS_PRICES` (JSON, per model, any of input/output/cache_read/cache_write and the long-input variants, USD per
million tokens) replaces catalog prices field by field. Every ledger row records the `price_version` it was priced
with, so a change of prices never rewrites history.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from service.catalog import MODELS, Price

PRIORITY_MULTIPLIER = Decimal("1.5")
CATALOG_VERSION = "minimax-paygo-2026-11"
MILLION = Decimal(1_000_000)


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenCounts:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class PriceTable:
    def __init__(self, overrides: dict[str, dict[str, float]] | None = None) -> None:
        overrides = overrides or {}
        unknown = sorted(set(overrides) - set(MODELS))
        if unknown:
            raise ValueError(f"prices: unknown model {unknown[0]!r}")
        self._prices: dict[str, tuple[Price, Price | None, int | None]] = {}
        for name, info in MODELS.items():
            o = overrides.get(name, {})
            base = _apply(info.price, o, "")
            long = _apply(info.long_input_price, o, "long_") if info.long_input_price else None
            self._prices[name] = (base, long, info.long_input_threshold)
        digest = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
        self.version = CATALOG_VERSION if not overrides else f"{CATALOG_VERSION}+{digest}"

    def price_for(self, model: str, prompt_tokens: int) -> Price:
        base, long, threshold = self._prices[model]
        if long is not None and threshold is not None and prompt_tokens > threshold:
            return long
        return base

    def cost(self, model: str, tokens: TokenCounts, *, priority: bool = False) -> Decimal:
        """USD for one call. M3's higher rate applies to the whole call once its prompt passes 512k tokens."""
        prompt = tokens.input_tokens + tokens.cache_read_tokens + tokens.cache_write_tokens
        p = self.price_for(model, prompt)
        cache_write = p.cache_write if p.cache_write is not None else p.input
        total = (
            Decimal(tokens.input_tokens) * Decimal(str(p.input))
            + Decimal(tokens.output_tokens) * Decimal(str(p.output))
            + Decimal(tokens.cache_read_tokens) * Decimal(str(p.cache_read))
            + Decimal(tokens.cache_write_tokens) * Decimal(str(cache_write))
        ) / MILLION
        return total * PRIORITY_MULTIPLIER if priority else total

    def estimate(
        self, model: str, *, input_tokens: int, max_output_tokens: int, priority: bool = False
    ) -> tuple[Decimal, Decimal]:
        """(least, most) a call can cost: its input alone, and its input plus every output token allowed."""
        least = self.cost(model, TokenCounts(input_tokens=input_tokens), priority=priority)
        most = self.cost(
            model, TokenCounts(input_tokens=input_tokens, output_tokens=max_output_tokens), priority=priority
        )
        return least, most


def _apply(price: Price | None, overrides: dict[str, float], prefix: str) -> Price:
    assert price is not None
    changes: dict[str, Any] = {}
    for field in ("input", "output", "cache_read", "cache_write"):
        value = overrides.get(prefix + field)
        if value is not None:
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"prices: {prefix + field} must be a non-negative number")
            changes[field] = float(value)
    return replace(price, **changes)


def is_priority(params: dict[str, Any]) -> bool:
    return params.get("service_tier") == "priority"
