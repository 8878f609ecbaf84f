"""The simulator answers to MiniMax's docs: for each fixture it can reproduce, its answer has the fixture's shape
(keys, value types, HTTP status, SSE event order), diffed key by key (issue 15.1). A failure lists every key the
simulator gets wrong, e.g. `choices[].message.audio_content: missing (MiniMax sends it)`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from simulator.config import SimulatorConfig
from simulator.server import running_simulator
from tests.conformance.corpus import diff, event_shapes, load_all, parse_sse, shape

KEY = "sk-conformance"
REPRODUCIBLE = [(n, f) for n, f in load_all() if "simulator" in f]
# An MP4 header (ISO base media `ftyp` box): what the Files API takes for video_understanding.
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(4096)


@pytest.fixture(scope="module")
def sim() -> Iterator[httpx.Client]:
    with (
        running_simulator(SimulatorConfig(api_keys=KEY, latency=0, output_tokens=48)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def ask(sim: httpx.Client, how: dict[str, Any]) -> httpx.Response:
    key = "sk-not-a-key" if how.get("key") == "bad" else KEY
    headers = {"Authorization": f"Bearer {key}"}
    if "upload" in how or how.get("retrieve_after_upload"):
        meta = how.get("upload", {"purpose": "video_understanding", "filename": "clip.mp4"})
        uploaded = sim.post(
            "/v1/files/upload",
            data={"purpose": meta["purpose"]},
            files={"file": (meta["filename"], MP4, "video/mp4")},
            headers=headers,
        )
        if "upload" in how:
            return uploaded
        file_id = uploaded.json()["file"]["file_id"]
        return sim.get(how["path"], params={"file_id": str(file_id)}, headers=headers)
    return sim.post(how["path"], json=how["body"], headers=headers)


@pytest.mark.parametrize(("name", "fixture"), REPRODUCIBLE, ids=[n for n, _ in REPRODUCIBLE])
def test_simulator_answer_has_the_fixture_shape(sim: httpx.Client, name: str, fixture: dict[str, Any]) -> None:
    how = fixture["simulator"]
    answer = fixture["response"]
    optional = how.get("optional", [])
    response = ask(sim, how)
    assert response.status_code == answer["status"], response.text[:300]
    if "events" not in answer:
        assert response.headers["content-type"].startswith("application/json")
        problems = diff(shape(answer["body"]), shape(response.json()), optional=optional)
        assert not problems, "\n".join(problems)
        return
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.content)
    if how.get("compare") == "last_event":
        expected_last, got_last = answer["events"][-1], events[-1]
        assert got_last.get("event") == expected_last.get("event")
        problems = diff(shape(expected_last["data"]), shape(got_last["data"]), optional=optional)
        assert not problems, "\n".join(problems)
        return
    expected, got = event_shapes(answer["events"]), event_shapes(events)
    assert [name for name, _ in got] == [name for name, _ in expected], "event order differs"
    problems = [
        f"event {i} ({name}): {problem}"
        for i, ((name, want), (_, have)) in enumerate(zip(expected, got, strict=True))
        for problem in diff(want, have, optional=optional)
    ]
    assert not problems, "\n".join(problems)


def test_shape_diff_names_what_differs() -> None:
    """The diff itself: a missing key, an extra key and a changed type are each reported, by path."""
    documented = {"usage": {"total_tokens": 1, "total_characters": 0}, "choices": [{"message": {"content": "x"}}]}
    served = {"usage": {"total_tokens": "1", "cached": 0}, "choices": [{"message": {"content": "y"}}]}
    assert diff(shape(documented), shape(served)) == [
        "usage.cached: extra (MiniMax does not send it)",
        "usage.total_characters: missing (MiniMax sends it)",
        "usage.total_tokens: int != str",
    ]
    assert diff(shape(documented), shape(documented | {"id": "a"}), optional=["id"]) == []
    assert json.dumps(shape(documented["choices"])) == '["list", {"message": {"content": "str"}}]'
