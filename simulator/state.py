"""The simulator's run-time state: current config, RNG, limiter, ledger and counters."""

from __future__ import annotations

import random
from typing import Annotated, cast

from fastapi import Depends, Request

from simulator.config import ConfigPatch, FaultKind, SimulatorConfig
from simulator.filestore import FileStore
from simulator.limits import Ledger, RateLimiter, Stats


class SimState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.limiter = RateLimiter()
        self.ledger = Ledger()
        self.stats = Stats()

        # Uploaded files (metadata only); kept across reset, like the files of a real account.
        self.files: FileStore = FileStore()

    def reconfigure(self, patch: ConfigPatch) -> SimulatorConfig:
        self.config = patch.apply(self.config)
        return self.config

    def reset(self) -> None:
        """Forget every call so far, and restart the RNG so a seeded run replays the same draws."""
        self.ledger.reset()
        self.stats.reset()
        self.limiter.reset()
        self.rng = random.Random(self.config.seed)

    def draw_latency(self) -> float:
        low, high = self.config.latency
        return low if low == high else self.rng.uniform(low, high)

    def draw_fault(self) -> FaultKind | None:
        faults = self.config.faults
        if not faults:
            return None
        # One draw picks at most one fault: the rates are disjoint slices of [0, 1).
        draw = self.rng.random()
        bound = 0.0
        for kind, rate in faults.items():
            bound += rate
            if draw < bound:
                return kind
        return None


def get_state(request: Request) -> SimState:
    return cast(SimState, request.app.state.sim)


StateDep = Annotated[SimState, Depends(get_state)]
