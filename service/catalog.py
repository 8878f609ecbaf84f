"""The MiniMax model catalog: windows, modalities, published rate limits and prices, in one data table.

Source: ../shared/reference/minimax-api.md. Prices are USD per million tokens (pay-as-you-go).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Price:
    input: float
    output: float
    cache_read: float
    cache_write: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelInfo:
    name: str
    context_window: int
    max_output_tokens: int
    modalities: frozenset[str]
    rpm: int
    tpm: int
    price: Price
    # M3 charges a higher rate once the input passes this many tokens.
    long_input_threshold: int | None = None
    long_input_price: Price | None = None
    count_tokens: bool = False
    # The wire formats MiniMax serves the model on (M2-her: the OpenAI-compatible API only).
    formats: frozenset[str] = frozenset({"anthropic", "openai"})
    # Message roles beyond the format's usual ones (M2-her's dialogue roles).
    extra_roles: frozenset[str] = frozenset()


_TEXT = frozenset({"text"})
_M3_MODALITIES = frozenset({"text", "image", "video"})
_STANDARD = Price(input=0.30, output=1.20, cache_read=0.03, cache_write=0.375)
_HIGHSPEED = Price(input=0.60, output=2.40, cache_read=0.03, cache_write=0.375)


def _m2(name: str, price: Price) -> ModelInfo:
    return ModelInfo(
        name=name,
        context_window=204_800,
        max_output_tokens=204_800,
        modalities=_TEXT,
        rpm=500,
        tpm=20_000_000,
        price=price,
    )


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo(
            name="MiniMax-M3",
            context_window=1_000_000,
            max_output_tokens=524_288,
            modalities=_M3_MODALITIES,
            rpm=200,
            tpm=10_000_000,
            price=Price(input=0.30, output=1.20, cache_read=0.06, cache_write=None),
            long_input_threshold=512_000,
            long_input_price=Price(input=0.60, output=2.40, cache_read=0.12, cache_write=None),
            count_tokens=True,
        ),
        _m2("MiniMax-M2.7", Price(input=0.30, output=1.20, cache_read=0.06, cache_write=0.375)),
        _m2("MiniMax-M2.7-highspeed", Price(input=0.60, output=2.40, cache_read=0.06, cache_write=0.375)),
        _m2("MiniMax-M2.5", _STANDARD),
        _m2("MiniMax-M2.5-highspeed", _HIGHSPEED),
        _m2("MiniMax-M2.1", _STANDARD),
        _m2("MiniMax-M2.1-highspeed", _HIGHSPEED),
        _m2("MiniMax-M2", _STANDARD),
        # The role-play model (models overview: "M2-her | 64 K"; text-chat page: max output 2048, roles user_system,
        # group, sample_message_user, sample_message_ai; called with the OpenAI SDK at api.minimax.io/v1). MiniMax
        # lists no rate limits or price for it: M2's are used until it does (operators override both).
        ModelInfo(
            name="M2-her",
            context_window=64_000,
            max_output_tokens=2048,
            modalities=_TEXT,
            rpm=500,
            tpm=20_000_000,
            price=_STANDARD,
            formats=frozenset({"openai"}),
            extra_roles=frozenset({"user_system", "group", "sample_message_user", "sample_message_ai"}),
        ),
    )
}


def get_model(name: str) -> ModelInfo | None:
    return MODELS.get(name)


def configured_limits(overrides: dict[str, tuple[int | None, int | None]]) -> dict[str, tuple[int, int]]:
    """(rpm, tpm) per model: MiniMax's published limits, replaced field by field by the operator's overrides."""
    out = {}
    for name, info in MODELS.items():
        rpm, tpm = overrides.get(name, (None, None))
        out[name] = (rpm or info.rpm, tpm or info.tpm)
    return out
