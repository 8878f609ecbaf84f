"""The Anthropic and OpenAI drop-ins driven by the official SDKs, unchanged, against the whole stack as real
processes: the API served by uvicorn (`mmjobs api`), the scheduler, a Celery worker and the simulator.
Answers and usage are checked against the simulator's own: its text carries `SIM:` + sha256 of the prompt and its
ledger says what it billed."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import openai
import pytest
from openai.types import Batch as OpenAIBatch
from sqlalchemy import func, select

from service.db import transaction
from service.models import Job
from service.tenants import service as tenants
from tests.e2e.conftest import Stack
from tests.procs import free_port, wait_http, wait_until

pytestmark = pytest.mark.e2e

T = TypeVar("T")
ANTHROPIC_MODEL = "MiniMax-M2.7"
OPENAI_MODEL = "MiniMax-M2.5"
SLOW = "[[sim:latency=3]]"


class SDKStack(Stack):
    """The e2e stack plus the API as a real HTTP server: the SDKs need one, and follow absolute URLs."""

    def __init__(self, log_dir: Path) -> None:
        super().__init__(log_dir)
        try:
            self.env["MMJOBS_FILES_DIR"] = str(log_dir / "files")
            port = free_port()
            self.api_url = f"http://127.0.0.1:{port}"
            self.api = self.start("api", ["-m", "service.cli", "api", "--port", str(port)])
            wait_http(self.api_url + "/healthz", self.api)
        except BaseException:
            self.close()
            raise

    def new_key(self, tenant: str) -> str:
        with transaction(self.session_factory) as session:
            return tenants.create_key(session, tenant_name=tenant).secret

    def anthropic(self, key: str | None = None) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=f"{self.api_url}/anthropic", api_key=key or self.api_key, max_retries=0)

    def openai(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api_url}/openai/v1", api_key=key or self.api_key, max_retries=0)

    def wait_running(self, batch_id: str) -> None:
        """Until one of the batch's requests is in a worker's hands (neither API shows that)."""

        def running() -> bool:
            with self.session_factory() as session:
                query = select(func.count()).select_from(Job).where(Job.batch_id == batch_id, Job.status == "running")
                return bool(session.scalar(query))

        wait_until(running, 30, f"a request of {batch_id} to run")


@pytest.fixture(scope="module")
def sdk_stack() -> Iterator[SDKStack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-e2e-sdk-") as tmp:
        s = SDKStack(Path(tmp))
        try:
            yield s
        finally:
            s.close()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def poll(stack: Stack, fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = 60) -> T:
    seen: list[T] = []

    def check() -> bool:
        seen[:] = [fetch()]
        return done(seen[0])

    try:
        wait_until(check, timeout, "the batch to end", interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen}\n{stack.logs()}") from None
    return seen[0]


def message_requests(texts: dict[str, str]) -> list[Any]:
    return [
        {
            "custom_id": custom_id,
            "params": {"model": ANTHROPIC_MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": text}]},
        }
        for custom_id, text in texts.items()
    ]


def jsonl_file(directory: Path, texts: dict[str, str], **params: Any) -> Path:
    path = directory / "requests.jsonl"
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": OPENAI_MODEL,
                "max_tokens": 300,
                "messages": [{"role": "user", "content": text}],
                **params,
            },
        }
        for custom_id, text in texts.items()
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


# --- Anthropic -------------------------------------------------------------------------------------------------


def test_anthropic_sdk_create_poll_results_delete(sdk_stack: SDKStack) -> None:
    client = sdk_stack.anthropic()
    texts = {f"doc-{i}": f"Summarize document {i}: the quick brown fox." for i in range(3)}
    texts["bad"] = "invalid params please [[sim:error=2013]]"
    created = client.messages.batches.create(requests=message_requests(texts))
    assert created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress"
    assert created.results_url is None
    batch = poll(
        sdk_stack, lambda: client.messages.batches.retrieve(created.id), lambda b: b.processing_status == "ended"
    )
    assert (batch.request_counts.succeeded, batch.request_counts.errored, batch.request_counts.processing) == (3, 1, 0)
    assert batch.ended_at is not None
    assert batch.results_url == f"{sdk_stack.api_url}/anthropic/v1/messages/batches/{batch.id}/results"
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert set(results) == set(texts)
    ledger = sdk_stack.ledger()
    for custom_id, text in texts.items():
        result = results[custom_id]
        if custom_id == "bad":
            assert result.type == "errored"
            assert result.error.error.type == "invalid_request_error"
            assert "2013" in result.error.error.message
            continue
        assert result.type == "succeeded"
        message = result.message
        answer = "".join(block.text for block in message.content if block.type == "text")
        assert f"SIM:{digest(text)}" in answer
        billed = ledger[message.id]
        assert message.usage.input_tokens == billed["input_tokens"] > 0
        assert message.usage.output_tokens == billed["output_tokens"] > 0
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_anthropic_sdk_cancel_list_and_errors(sdk_stack: SDKStack) -> None:
    client = sdk_stack.anthropic(sdk_stack.new_key("anthropic-sdk-cancel"))
    first = client.messages.batches.create(requests=message_requests({"quick": "one quick request"}))
    # More slow requests than the worker runs at once (20): some are still queued when the cancel comes.
    texts = {f"slow-{i}": f"slow request {i} {SLOW}" for i in range(30)}
    second = client.messages.batches.create(requests=message_requests(texts))
    with pytest.raises(anthropic.BadRequestError, match="until it has ended"):
        client.messages.batches.delete(second.id)
    sdk_stack.wait_running(second.id)
    canceling = client.messages.batches.cancel(second.id)
    # Queued requests are canceled at once; running ones finish, so the batch is canceling until they have.
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.results_url is None
    batch = poll(
        sdk_stack, lambda: client.messages.batches.retrieve(second.id), lambda b: b.processing_status == "ended"
    )
    counts = batch.request_counts
    assert counts.canceled >= 10
    assert counts.succeeded >= 1
    assert counts.canceled + counts.succeeded == 30
    results = list(client.messages.batches.results(second.id))
    assert sum(r.result.type == "canceled" for r in results) == counts.canceled
    assert sum(r.result.type == "succeeded" for r in results) == counts.succeeded
    # Newest first, one per page: the SDK follows last_id through every page.
    assert [b.id for b in client.messages.batches.list(limit=1)] == [second.id, first.id]
    page = client.messages.batches.list(limit=1, before_id=first.id)
    assert ([b.id for b in page.data], page.has_more) == ([second.id], False)
    # Errors come back in Anthropic's shape, so the SDK raises its own exceptions with the field named.
    too_hot = message_requests({"fine": "fine", "hot": "too hot"})
    too_hot[1]["params"]["temperature"] = 3
    with pytest.raises(anthropic.BadRequestError, match=r"requests\[1\]\.params\.temperature") as bad:
        client.messages.batches.create(requests=too_hot)
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.AuthenticationError):
        sdk_stack.anthropic("mmj_not-a-key").messages.batches.list()
    with pytest.raises(anthropic.NotFoundError):
        sdk_stack.anthropic().messages.batches.retrieve(second.id)  # another tenant's


# --- OpenAI ----------------------------------------------------------------------------------------------------


def test_openai_sdk_documented_flow(sdk_stack: SDKStack, tmp_path: Path) -> None:
    client = sdk_stack.openai()
    texts = {f"req-{i}": f"Classify ticket {i}: printer on fire." for i in range(3)}
    texts["bad"] = "invalid params please [[sim:error=2013]]"
    path = jsonl_file(tmp_path, texts)
    with path.open("rb") as handle:
        file = client.files.create(file=handle, purpose="batch")
    assert (file.purpose, file.status, file.bytes) == ("batch", "processed", path.stat().st_size)
    assert client.files.content(file.id).content == path.read_bytes()
    created = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "sdk"}
    )
    assert (created.status, created.input_file_id, created.metadata) == ("in_progress", file.id, {"run": "sdk"})
    batch = poll(sdk_stack, lambda: client.batches.retrieve(created.id), lambda b: b.status == "completed")
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (4, 3, 1)
    assert batch.completed_at is not None
    assert batch.output_file_id is not None
    assert batch.error_file_id is not None
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1", "req-2"]
    ledger = sdk_stack.ledger()
    output_tokens = 0
    for line in output:
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "chat.completion"
        assert digest(texts[line["custom_id"]]) in body["choices"][0]["message"]["content"]
        billed = ledger[body["id"]]
        assert body["usage"]["prompt_tokens"] == billed["input_tokens"] > 0
        assert body["usage"]["completion_tokens"] == billed["output_tokens"] > 0
        output_tokens += billed["output_tokens"]
    assert batch.usage is not None
    assert batch.usage.output_tokens == output_tokens
    [error] = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert error["custom_id"] == "bad"
    assert error["response"]["status_code"] == 400
    assert "2013" in error["error"]["message"]
    assert client.files.delete(file.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file.id)


def test_openai_sdk_cancel_list_and_errors(sdk_stack: SDKStack, tmp_path: Path) -> None:
    client = sdk_stack.openai(sdk_stack.new_key("openai-sdk-cancel"))

    def create(texts: dict[str, str]) -> OpenAIBatch:
        with jsonl_file(tmp_path, texts).open("rb") as handle:
            file = client.files.create(file=handle, purpose="batch")
        return client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")

    first = create({"quick": "one quick request"})
    second = create({f"slow-{i}": f"slow request {i} {SLOW}" for i in range(30)})
    sdk_stack.wait_running(second.id)
    cancelling = client.batches.cancel(second.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    batch = poll(sdk_stack, lambda: client.batches.retrieve(second.id), lambda b: b.status == "cancelled")
    assert batch.cancelled_at is not None
    assert batch.error_file_id is not None
    cancelled = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert len(cancelled) >= 10
    assert {line["error"]["code"] for line in cancelled} == {"batch_cancelled"}
    assert batch.request_counts is not None
    assert batch.request_counts.completed + len(cancelled) == 30
    assert batch.request_counts.completed >= 1
    assert batch.output_file_id is not None
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(second.id)
    # Newest first; the SDK pages with `after` = the last id of each page.
    assert [b.id for b in client.batches.list(limit=1)] == [second.id, first.id]
    # Errors come back in OpenAI's shape: the SDK raises its own exceptions, `param` names the field.
    with jsonl_file(tmp_path, {"hot": "too hot"}, temperature=3).open("rb") as handle:
        file = client.files.create(file=handle, purpose="batch")
    with pytest.raises(openai.BadRequestError, match="line 1") as bad:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "body.temperature"
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id=file.id,
            endpoint="/v1/embeddings",  # a valid OpenAI endpoint, but not one MiniMax has
            completion_window="24h",
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "endpoint"
    with pytest.raises(openai.NotFoundError):
        sdk_stack.openai().batches.retrieve(second.id)  # another tenant's
    with pytest.raises(openai.AuthenticationError):
        sdk_stack.openai("mmj_not-a-key").batches.list()
