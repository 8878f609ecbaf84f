"""Cost to the token from the price table (reference/minimax-api.md), with operator overrides."""

from __future__ import annotations

from decimal import Decimal

import pytest

from service.pricing import PriceTable, TokenCounts

M = 1_000_000


def test_m27_prices_every_token_kind() -> None:
    t = PriceTable()
    cost = t.cost(
        "MiniMax-M2.7", TokenCounts(input_tokens=M, output_tokens=M, cache_read_tokens=M, cache_write_tokens=M)
    )
    assert cost == Decimal("0.30") + Decimal("1.20") + Decimal("0.06") + Decimal("0.375")


def test_highspeed_costs_double() -> None:
    t = PriceTable()
    assert t.cost("MiniMax-M2.5-highspeed", TokenCounts(input_tokens=M)) == Decimal("0.60")
    assert t.cost("MiniMax-M2.5", TokenCounts(output_tokens=M)) == Decimal("1.20")


def test_m3_steps_up_above_512k_prompt_tokens() -> None:
    t = PriceTable()
    assert (
        t.cost("MiniMax-M3", TokenCounts(input_tokens=512_000, output_tokens=1000))
        == (Decimal(512_000) * Decimal("0.30") + Decimal(1000) * Decimal("1.20")) / M
    )
    # One token over: the whole call at the long-input rate, cached prompt tokens counted toward the step.
    assert (
        t.cost("MiniMax-M3", TokenCounts(input_tokens=500_000, cache_read_tokens=12_001, output_tokens=1000))
        == (Decimal(500_000) * Decimal("0.60") + Decimal(12_001) * Decimal("0.12") + Decimal(1000) * Decimal("2.40"))
        / M
    )


def test_priority_tier_costs_one_and_a_half() -> None:
    t = PriceTable()
    plain = t.cost("MiniMax-M2.7", TokenCounts(input_tokens=1000, output_tokens=500))
    assert t.cost("MiniMax-M2.7", TokenCounts(input_tokens=1000, output_tokens=500), priority=True) == plain * Decimal(
        "1.5"
    )


def test_m3_cache_write_without_a_listed_price_is_charged_as_input() -> None:
    assert PriceTable().cost("MiniMax-M3", TokenCounts(cache_write_tokens=100_000)) == Decimal("0.03")


def test_overrides_change_prices_and_the_version() -> None:
    base = PriceTable()
    custom = PriceTable({"MiniMax-M2.7": {"output": 1.0}})
    assert custom.cost("MiniMax-M2.7", TokenCounts(output_tokens=M)) == Decimal("1.0")
    assert custom.cost("MiniMax-M2.7", TokenCounts(input_tokens=M)) == Decimal("0.30")
    assert custom.version != base.version
    assert custom.version.startswith(base.version)


@pytest.mark.parametrize("bad", [{"MiniMax-X": {"input": 1}}, {"MiniMax-M3": {"input": -1}}])
def test_bad_overrides_are_refused(bad: dict[str, dict[str, float]]) -> None:
    with pytest.raises(ValueError, match="prices"):
        PriceTable(bad)


def test_estimate_spans_input_only_to_full_output() -> None:
    least, most = PriceTable().estimate("MiniMax-M2.7", input_tokens=10_000, max_output_tokens=2_000)
    assert least == Decimal(10_000) * Decimal("0.30") / M
    assert most == least + Decimal(2_000) * Decimal("1.20") / M
