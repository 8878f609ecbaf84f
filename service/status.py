"""What the scheduler knows about waiting work and rate limits, published to Redis for the API to show.

The scheduler writes one document per pass; the API reads it for `GET /v1/limits` and for the `waiting` field of
a queued job. It is a view, never a source of truth: stale or missing, nothing breaks but the explanation.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

STATUS_KEY = "mmjobs:status:scheduler"
STATUS_TTL_SECONDS = 30
log = logging.getLogger(__name__)


def group_key(tenant_id: str, model: str) -> str:
    return f"{tenant_id}|{model}"


def publish(client: redis.Redis, document: dict[str, Any]) -> None:
    client.set(STATUS_KEY, json.dumps(document, default=str), ex=STATUS_TTL_SECONDS)


def read(client: redis.Redis) -> dict[str, Any]:
    try:
        raw = client.get(STATUS_KEY)
    except redis.RedisError as exc:
        log.warning("scheduler status unavailable: %s", exc)
        return {}
    if not raw:
        return {}
    document: dict[str, Any] = json.loads(raw)
    return document
