"""A worker's clients to MiniMax (workers/runtime.py `UpstreamClients`): MMJOBS_UPSTREAM_MAX_CONNECTIONS split over
small pools, so thousands of call threads never walk one huge pool; the cap on connections still holds in all."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpcore
import pytest

from service.config import Settings
from simulator.config import SimulatorConfig
from simulator.remote import SimulatorControl
from simulator.server import running_simulator
from tests.workers.providers.conftest import short_call
from workers.runtime import SHARD_CONNECTIONS, UpstreamClients
from workers.stopping import StoppableBackend


class OpenConnections:
    """Counts the worker's connections open at once, across its pools: each pool's backend (the one
    stoppable_transport installs) wrapped so that a connect adds one and its close takes it away."""

    def __init__(self, clients: UpstreamClients) -> None:
        self.open = self.peak = 0
        self._lock = threading.Lock()
        for client in clients.clients:
            client._transport._pool._network_backend = self._Backend(self)  # type: ignore[attr-defined]

    def moved(self, by: int) -> None:
        with self._lock:
            self.open += by
            self.peak = max(self.peak, self.open)

    class _Backend(StoppableBackend):
        def __init__(self, count: OpenConnections) -> None:
            super().__init__()
            self.count = count

        def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
            stream = super().connect_tcp(*args, **kwargs)
            self.count.moved(+1)
            inner_close = stream.close

            def close() -> None:
                inner_close()
                self.count.moved(-1)

            stream.close = close  # type: ignore[method-assign]
            return stream


@pytest.fixture(scope="module")
def slow_simulator() -> Iterator[str]:
    with running_simulator(SimulatorConfig(latency=0.5, output_tokens=8, seed=1)) as url:
        yield url


def test_threads_beyond_the_cap_wait_and_every_call_is_answered(slow_simulator: str) -> None:
    clients = UpstreamClients(Settings(upstream_max_connections=40))
    assert len(clients.clients) == 2  # 40 connections: two pools of 20 (at most SHARD_CONNECTIONS each)
    connections = OpenConnections(clients)
    answers: list[str] = []
    used: dict[int, set[int]] = {}

    def thread(i: int) -> None:
        for round_ in range(2):
            used.setdefault(i, set()).add(id(clients.client()))
            answers.append(short_call(clients.client(), slow_simulator, f"thread {i} round {round_}"))

    with SimulatorControl(slow_simulator) as sim:
        sim.reset()
        threads = [threading.Thread(target=thread, args=(i,)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = sim.stats()
    clients.close()
    assert len(answers) == 120
    assert all("You said: thread" in a for a in answers)
    # 60 threads, 40 connections: never more than 40 open at once, and the pools were used together. (The simulator's
    # own count of calls in flight is no measure of connections: it ends a call when its handler returns, after
    # the client has read the whole answer and may have sent the next one.)
    assert SHARD_CONNECTIONS < connections.peak <= 40
    assert stats["peak_in_flight"] > SHARD_CONNECTIONS, stats
    assert all(len(ids) == 1 for ids in used.values())  # a thread keeps to its pool (and its kept-alive connection)
    assert {next(iter(ids)) for ids in used.values()} == {id(c) for c in clients.clients}


def test_the_pools_add_up_to_the_cap_and_share_one_ssl_context() -> None:
    clients = UpstreamClients(Settings(upstream_max_connections=1000))
    pools = [c._transport._pool for c in clients.clients]  # type: ignore[attr-defined]
    clients.close()
    assert len(pools) == 32  # 1000 connections: 32 pools of 31 or 32
    assert sum(p._max_connections for p in pools) == 1000
    assert max(p._max_connections for p in pools) <= SHARD_CONNECTIONS
    assert len({id(p._ssl_context) for p in pools}) == 1
