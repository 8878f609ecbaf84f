"""What the Celery queue in Redis holds, read as kombu's Redis transport stores it (protocol 2: body = [args,
kwargs, embed]): the job ids each run_jobs message names."""

from __future__ import annotations

import base64
import json

import redis

from workers.celery_app import QUEUE, RUN_JOBS


def queued_messages(broker: redis.Redis) -> list[list[str]]:
    """The job ids of each message, the oldest first (kombu LPUSHes)."""
    messages = [json.loads(m) for m in reversed(broker.lrange(QUEUE, 0, -1))]
    assert {m["headers"]["task"] for m in messages} <= {RUN_JOBS}
    return [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]


def queued_job_ids(broker: redis.Redis) -> list[str]:
    return [job_id for message in queued_messages(broker) for job_id in message]
