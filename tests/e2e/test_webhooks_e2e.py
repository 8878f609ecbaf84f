"""Signed webhooks through real processes: a job's and a batch's events reach a local receiver, signed by the
Standard Webhooks spec, and verify with the `standardwebhooks` library."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.e2e.conftest import Stack
from tests.procs import free_port, wait_until

pytestmark = pytest.mark.e2e


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self, secret: str) -> list[dict[str, Any]]:
        out = []
        for headers, body in list(self.received):
            out.append(dict(Webhook(secret).verify(body, headers)))
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def test_job_and_batch_events_arrive_signed(stack: Stack, receiver: Receiver) -> None:
    r = stack.client.post("/v1/webhook-secret", headers=stack.auth)
    if r.status_code == 409:  # made earlier in this stack: rotate to learn it again
        r = stack.client.post("/v1/webhook-secret/rotate", headers=stack.auth)
    assert r.status_code in (200, 201), r.text
    secret = r.json()["secret"]
    job_id = stack.submit("notify me", webhook_url=receiver.url)
    batch = stack.client.post(
        "/v1/batches",
        json={"webhook_url": receiver.url, "requests": [
            {"custom_id": "a", "model": "MiniMax-M2.7", "params": {"max_tokens": 32, "messages": [
                {"role": "user", "content": "batch hello"}]}}]},
        headers=stack.auth,
    ).json()  # fmt: skip
    wait_until(lambda: len(receiver.received) >= 2, 30, "two webhook deliveries")
    events = {e["type"]: e for e in receiver.events(secret)}
    assert events["job.succeeded"]["data"]["id"] == job_id
    assert events["job.succeeded"]["data"]["usage"]["output_tokens"] > 0
    assert "result" not in events["job.succeeded"]["data"]  # large bodies are fetched, not pushed
    assert events["batch.ended"]["data"]["id"] == batch["id"]
    assert events["batch.ended"]["data"]["request_counts"]["succeeded"] == 1
    headers, body = receiver.received[0]
    assert headers["webhook-id"] == json.loads(body)["id"]
    assert headers["webhook-signature"].startswith("v1,")
    # A wrong secret does not verify.
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook("whsec_" + "A" * 43 + "=").verify(body, headers)
