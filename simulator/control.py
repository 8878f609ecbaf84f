"""The simulator's own endpoints under ``/_sim``: config, reset, ledger, stats; plus ``/healthz``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from simulator.config import ConfigPatch
from simulator.state import StateDep

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": "minimax-simulator"}


@router.get("/_sim/config")
async def read_config(state: StateDep) -> dict[str, Any]:
    return state.config.describe()


@router.post("/_sim/config")
async def change_config(patch: ConfigPatch, state: StateDep) -> dict[str, Any]:
    """Change latency, rpm, tpm, faults (and output_tokens, base_resp_code) without a restart."""
    return state.reconfigure(patch).describe()


@router.post("/_sim/reset")
async def reset(state: StateDep) -> dict[str, str]:
    """Clear the ledger, the counters and the rate-limit windows."""
    state.reset()
    return {"status": "reset"}


@router.get("/_sim/ledger")
async def ledger(state: StateDep) -> dict[str, Any]:
    return state.ledger.snapshot()


@router.get("/_sim/stats")
async def stats(state: StateDep) -> dict[str, Any]:
    return state.stats.snapshot(state.limiter.usage())
