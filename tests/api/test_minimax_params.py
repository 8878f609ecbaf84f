"""What MiniMax's docs name is accepted at intake, and what MiniMax does not take is refused there, naming the field
(issue 15.4, 15.6): M2-her with its dialogue roles, base64 MOV labelled `video/mov`, tool_choice, reasoning_split."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Job
from tests.media.samples import b64

HER_MESSAGES = [
    {"role": "system", "content": "You are Mira, a ship's cook."},
    {"role": "user_system", "content": "The user is a passenger."},
    {"role": "group", "content": "Galley crew"},
    {"role": "sample_message_user", "content": "What's for dinner?"},
    {"role": "sample_message_ai", "content": "Fish stew, as every night."},
    {"role": "user", "content": "Any dessert?"},
]
TOOLS_ANTHROPIC = [{"name": "search", "input_schema": {"type": "object", "properties": {}}}]
TOOLS_OPENAI = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]


def submit(client: TestClient, auth: dict[str, str], **job: Any) -> Any:
    return client.post("/v1/jobs", json=job, headers=auth)


def jobs(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_m2_her_with_its_dialogue_roles_is_accepted_on_the_openai_format(
    client: TestClient, auth: dict[str, str]
) -> None:
    r = submit(client, auth, model="M2-her", format="openai", params={"messages": HER_MESSAGES, "max_tokens": 2048})
    assert r.status_code == 202, r.text
    assert r.json()["model"] == "M2-her"


@pytest.mark.parametrize(
    ("job", "field", "words"),
    [
        (
            {"model": "M2-her", "format": "openai", "params": {"messages": HER_MESSAGES, "max_tokens": 2049}},
            "params.max_tokens",
            "output limit of 2048",
        ),
        (
            {"model": "M2-her", "format": "anthropic", "params": {"messages": [{"role": "user", "content": "hi"}]}},
            "format",
            "openai format only",
        ),
        (
            {"model": "MiniMax-M2.7", "format": "openai", "params": {"messages": HER_MESSAGES}},
            "params.messages[1].role",
            "M2-her only",
        ),
    ],
)
def test_m2_her_limits_name_the_field(
    client: TestClient, auth: dict[str, str], session: Session, job: dict[str, Any], field: str, words: str
) -> None:
    before = jobs(session)
    r = submit(client, auth, **job)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert words in error["message"]
    assert jobs(session) == before


@pytest.mark.parametrize("fmt", ["anthropic", "openai"])
def test_base64_mov_labelled_video_mov_is_accepted(client: TestClient, auth: dict[str, str], fmt: str) -> None:
    data = b64("video/quicktime", 4096)
    if fmt == "anthropic":
        part: dict[str, Any] = {"type": "video", "source": {"type": "base64", "media_type": "video/mov", "data": data}}
    else:
        part = {"type": "video_url", "video_url": {"url": f"data:video/mov;base64,{data}"}}
    content = [part, {"type": "text", "text": "What happens?"}]
    params = {"messages": [{"role": "user", "content": content}], "max_tokens": 64}
    r = submit(client, auth, model="MiniMax-M3", format=fmt, params=params)
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(
    ("fmt", "choice", "ok"),
    [
        ("anthropic", {"type": "auto"}, True),
        ("anthropic", {"type": "none"}, True),
        ("anthropic", {"type": "any"}, False),
        ("anthropic", {"type": "tool", "name": "search"}, False),
        ("openai", "auto", True),
        ("openai", "none", True),
        ("openai", "required", False),
        ("openai", {"type": "function", "function": {"name": "search"}}, False),
    ],
)
def test_tool_choice_values_minimax_does_not_take_are_refused_naming_the_field(
    client: TestClient, auth: dict[str, str], session: Session, fmt: str, choice: Any, ok: bool
) -> None:
    tools = TOOLS_ANTHROPIC if fmt == "anthropic" else TOOLS_OPENAI
    params = {"messages": [{"role": "user", "content": "find it"}], "tools": tools, "tool_choice": choice}
    before = jobs(session)
    r = submit(client, auth, model="MiniMax-M2.7", format=fmt, params=params | {"max_tokens": 64})
    if ok:
        assert r.status_code == 202, r.text
        return
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "params.tool_choice"
    assert "MiniMax supports only auto and none" in error["message"]
    assert jobs(session) == before


def test_reasoning_split_is_a_per_job_openai_switch(client: TestClient, auth: dict[str, str]) -> None:
    params: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], "reasoning_split": True}
    assert submit(client, auth, model="MiniMax-M2.7", format="openai", params=params).status_code == 202
    wrong = submit(client, auth, model="MiniMax-M2.7", format="openai", params=params | {"reasoning_split": "yes"})
    assert (wrong.status_code, wrong.json()["error"]["field"]) == (422, "params.reasoning_split")
    anthropic = submit(client, auth, model="MiniMax-M2.7", format="anthropic", params=params | {"max_tokens": 9})
    assert (anthropic.status_code, anthropic.json()["error"]["field"]) == (422, "params.reasoning_split")


def test_a_batch_sets_reasoning_split_for_its_openai_requests_that_do_not_say(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    def line(custom_id: str, fmt: str, **extra: Any) -> dict[str, Any]:
        params = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 16, **extra}
        return {"custom_id": custom_id, "model": "MiniMax-M2.7", "format": fmt, "params": params}

    requests = [line("a", "openai"), line("b", "openai", reasoning_split=False), line("c", "anthropic")]
    r = client.post("/v1/batches", json={"requests": requests, "reasoning_split": True}, headers=auth)
    assert r.status_code in (200, 201, 202), r.text
    stored = {j.custom_id: j.params for j in session.scalars(select(Job).where(Job.batch_id == r.json()["id"]))}
    assert stored["a"]["reasoning_split"] is True
    assert stored["b"]["reasoning_split"] is False  # the request's own choice stays
    assert "reasoning_split" not in stored["c"]  # the Anthropic format returns thinking blocks already


def test_the_openai_batch_drop_in_turns_reasoning_split_on_unless_a_line_says(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    from tests.api.test_dropins import OPENAI, upload

    def line(custom_id: str, **extra: Any) -> dict[str, Any]:
        body = {"model": "MiniMax-M2.7", "messages": [{"role": "user", "content": "x"}], "max_tokens": 16, **extra}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}

    file = upload(client, auth, [line("default"), line("own", reasoning_split=False)])
    r = client.post(
        f"{OPENAI}/batches",
        json={"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    stored = {j.custom_id: j.params for j in session.scalars(select(Job).where(Job.batch_id == r.json()["id"]))}
    assert stored == {
        "default": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 16, "reasoning_split": True},
        "own": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 16, "reasoning_split": False},
    }
