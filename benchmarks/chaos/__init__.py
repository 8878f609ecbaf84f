"""The chaos driver (`python -m benchmarks.chaos`): the whole stack as separate processes on a private Postgres and
Redis, one fault per scenario during a running batch. Modules: __main__ (command line, table), stack (sizes,
processes, faults), run (one scenario), measure (the figures), infra (private servers), receiver (webhooks)."""
