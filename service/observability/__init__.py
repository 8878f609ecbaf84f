"""Metrics (`/metrics` on the API, and each worker's own port), structured logs, and the request log.

- `metrics`: the API's Prometheus endpoint, read from Postgres and Redis at scrape time (see its docstring).
- `worker`: what only a worker process knows (calls in flight, upstream latency) and the Celery hooks.
- `logging`: structlog for every process, the bound job context, and the redaction of secrets.
- `requests`: one log line per API request.
"""
