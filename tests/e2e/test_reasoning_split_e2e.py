"""The OpenAI Batch drop-in with an M2.x model, driven by the official SDK against the whole stack (issue 15.6):
each output line's `content` is the answer alone (MiniMax's reasoning_split is on by default), the reasoning is kept
whole in `reasoning_details`, and a line that turns reasoning_split off gets MiniMax's inline <think> back."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_sdk_batches import SDKStack, digest, jsonl_file, poll

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sdk_stack() -> Iterator[SDKStack]:
    with tempfile.TemporaryDirectory(prefix="mmjobs-e2e-reasoning-") as tmp:
        s = SDKStack(Path(tmp))
        try:
            yield s
        finally:
            s.close()


def test_openai_batch_output_content_is_the_answer_with_reasoning_in_reasoning_details(
    sdk_stack: SDKStack, tmp_path: Path
) -> None:
    client = sdk_stack.openai()
    texts = {f"req-{i}": f"Label ticket {i} as JSON." for i in range(2)} | {"inline": "Label ticket 9 as JSON."}
    path = jsonl_file(tmp_path, texts)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[-1]["body"]["reasoning_split"] = False  # this line asks for MiniMax's inline form
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with path.open("rb") as handle:
        file = client.files.create(file=handle, purpose="batch")
    created = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = poll(sdk_stack, lambda: client.batches.retrieve(created.id), lambda b: b.status == "completed")
    assert batch.output_file_id is not None
    output = {
        row["custom_id"]: row["response"]["body"]["choices"][0]["message"]
        for row in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())
    }
    assert sorted(output) == ["inline", "req-0", "req-1"]
    for custom_id in ("req-0", "req-1"):
        message = output[custom_id]
        assert message["content"].startswith(f"SIM:{digest(texts[custom_id])}")  # the answer, nothing before it
        assert "<think>" not in message["content"]
        [detail] = message["reasoning_details"]
        assert detail["type"] == "reasoning.text"
        assert detail["text"] == message["reasoning_content"]
        assert detail["text"].startswith("Simulated reasoning")  # whole: every streamed piece, in order
    assert output["inline"]["content"].startswith("<think>")
    assert "reasoning_details" not in output["inline"]
