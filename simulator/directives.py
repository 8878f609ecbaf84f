"""Per-request directives: ``[[sim:KEY=VALUE]]`` markers in the last user message's text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import cast

from simulator.config import FAULT_KINDS, FaultKind

_DIRECTIVE = re.compile(r"\[\[sim:([A-Za-z_]+)=([^\]]*)\]\]")


@dataclass(frozen=True, kw_only=True)
class Directives:
    fault: FaultKind | None = None
    base_resp: int | None = None
    latency: float | None = None
    output_tokens: int | None = None
    error: int | None = None
    # MiniMax's content filter trips on the input or the output: an empty answer with the flag set.
    sensitive: str | None = None


def parse_directives(text: str) -> Directives:
    """Read every directive in ``text``; a malformed one raises ``ValueError`` naming it."""
    fault: FaultKind | None = None
    numbers: dict[str, int] = {}
    latency: float | None = None
    sensitive: str | None = None
    for match in _DIRECTIVE.finditer(text):
        key, raw = match.group(1).lower(), match.group(2).strip()
        shown = match.group(0)
        if key == "fault":
            if raw not in FAULT_KINDS:
                raise ValueError(f"sim directive {shown}: fault must be one of {', '.join(FAULT_KINDS)}")
            fault = cast(FaultKind, raw)
        elif key in ("base_resp", "error", "output_tokens"):
            numbers[key] = _integer(raw, shown, minimum=1)
        elif key == "sensitive":
            if raw not in ("input", "output"):
                raise ValueError(f"sim directive {shown}: sensitive must be input or output")
            sensitive = raw
        elif key == "latency":
            try:
                latency = float(raw)
            except ValueError:
                latency = -1.0
            if not 0 <= latency <= 3600:
                raise ValueError(f"sim directive {shown}: latency must be seconds in [0, 3600]")
        else:
            raise ValueError(
                f"unknown sim directive {shown}; known: fault, base_resp, error, latency, output_tokens, sensitive"
            )
    return Directives(
        fault=fault,
        base_resp=numbers.get("base_resp"),
        latency=latency,
        output_tokens=numbers.get("output_tokens"),
        error=numbers.get("error"),
        sensitive=sensitive,
    )


def _integer(raw: str, shown: str, *, minimum: int) -> int:
    if not raw.isdigit() or int(raw) < minimum:
        raise ValueError(f"sim directive {shown}: expected an integer >= {minimum}")
    return int(raw)
