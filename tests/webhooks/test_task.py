"""The scheduler's publisher puts `mmjobs.deliver_webhook(delivery_id)` on the real broker: the id, nothing else."""

from __future__ import annotations

import json

import redis

from service.config import Settings
from workers.celery_app import QUEUE, app, make_celery
from workers.webhooks import DELIVER_WEBHOOK, publisher


def test_task_is_registered() -> None:
    assert DELIVER_WEBHOOK in app.tasks


def test_publisher_sends_only_the_id(settings: Settings) -> None:
    broker = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    publisher(make_celery(settings))("whd_test_publish")
    mine: list[str] = []
    queued: list[str] = broker.lrange(QUEUE, 0, -1)  # type: ignore[assignment]
    for raw in queued:
        message = json.loads(raw)
        if message["headers"]["task"] == DELIVER_WEBHOOK and "whd_test_publish" in message["headers"]["argsrepr"]:
            mine.append(raw)
    assert len(mine) == 1
    assert json.loads(mine[0])["headers"]["argsrepr"] == "['whd_test_publish']"
    broker.lrem(QUEUE, 0, mine[0])
