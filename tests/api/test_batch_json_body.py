"""JSON batch bodies are read a request at a time (service/batches/json_stream.py), never whole (issue 14.2): a
JSON batch is stored exactly like the same JSONL, a bad request k is refused naming `requests[k]` with nothing
stored, and where the reading window happens to cut the text changes nothing."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.batches import json_stream
from service.models import Batch, Job

MODEL = "MiniMax-M2.7"
ANTHROPIC = "/anthropic/v1/messages/batches"
TEXTS = ["plain", 'quotes " and \\ backslashes', "accents é ü ß", "emoji 😀 and CJK 漢字", "tab\tnew\nline", "x" * 3000]


def request(i: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "max_tokens": 10 + i,
        "temperature": 0.25 * (i % 4),
        "messages": [{"role": "user", "content": f"{TEXTS[i % len(TEXTS)]} #{i}"}],
        "metadata": {"user_id": f"u{i}"},
    }
    return {"custom_id": f"doc-{i}", "model": MODEL, "params": params}


def counts(session: Session) -> tuple[int, int]:
    return (
        int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        int(session.scalar(select(func.count()).select_from(Job)) or 0),
    )


def stored_jobs(session: Session, batch_id: str) -> list[tuple[Any, ...]]:
    rows = session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.custom_id)).all()
    return [
        (j.custom_id, j.model, j.format, j.params, j.max_tokens, j.estimated_input_tokens, j.expires_at - j.created_at)
        for j in rows
    ]


def test_a_json_batch_is_stored_exactly_like_the_same_jsonl(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    requests = [request(i) for i in range(40)]
    # The options after the requests: they are found wherever they stand.
    body = {"requests": requests, "metadata": {"run": "7"}, "completion_window": "90m"}
    r = client.post(
        "/v1/batches",
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers=auth | {"content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    from_json = r.json()
    lines = "\n".join(json.dumps(x) for x in requests).encode()
    r = client.post(
        "/v1/batches",
        params={"metadata": json.dumps({"run": "7"}), "completion_window": "90m"},
        content=lines,
        headers=auth | {"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 202, r.text
    from_jsonl = r.json()

    assert from_json["request_total"] == from_jsonl["request_total"] == 40
    assert from_json["metadata"] == from_jsonl["metadata"] == {"run": "7"}
    as_json, as_jsonl = stored_jobs(session, from_json["id"]), stored_jobs(session, from_jsonl["id"])
    assert as_json == as_jsonl
    assert len(as_json) == 40
    assert {row[6] for row in as_json} == {timedelta(minutes=90)}
    assert [row[3] for row in sorted(as_json, key=lambda row: int(row[0][4:]))] == [x["params"] for x in requests]


# (text of request 3, the field the 400 names, how its message begins). Text that is not JSON names the request;
# JSON holding a value no request may carry names the value (service.validation: as a JSONL line does).
BAD_VALUES = [
    pytest.param(
        b'{"custom_id": "doc-3", "model": "MiniMax-M2.7", "params": {"max_tokens": tru}}',
        "requests[3]",
        "requests[3] is not valid JSON",
        id="bad-token",
    ),
    pytest.param(
        b'{"custom_id": "doc-3", "model": "MiniMax-M2.7", "params": {"n": ' + b"9" * 5000 + b"}}",
        "requests[3].params.n",
        "requests[3].params.n",
        id="huge-int",
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "requests[3]", "requests[3] is not valid JSON", id="deep-nesting"),
    pytest.param(
        b'{"custom_id": "doc-3", "params": {"x": "unterminated}}',
        "requests[3]",
        "requests[3] is not valid JSON",
        id="unterminated-string",
    ),
]


@pytest.mark.parametrize(("bad", "field", "message"), BAD_VALUES)
def test_a_bad_value_in_request_k_names_it_and_stores_nothing(
    client: TestClient, auth: dict[str, str], session: Session, bad: bytes, field: str, message: str
) -> None:
    before = counts(session)
    items = [json.dumps(request(i)).encode() for i in range(3)] + [bad] + [json.dumps(request(4)).encode()]
    body = b'{"metadata": {"a": "b"}, "requests": [' + b", ".join(items) + b"]}"
    r = client.post("/v1/batches", content=body, headers=auth | {"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == ("invalid_json" if field == "requests[3]" else "invalid_request")
    assert error["field"] == field
    assert error["message"].startswith(message)
    assert counts(session) == before


@pytest.mark.parametrize(("bad", "field", "message"), BAD_VALUES)
def test_the_anthropic_drop_in_names_request_k_too(
    client: TestClient, api_key: str, session: Session, bad: bytes, field: str, message: str
) -> None:
    before = counts(session)
    good = json.dumps(
        {
            "custom_id": "doc-0",
            "params": {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        }
    ).encode()
    body = (
        b'{"requests": ['
        + b", ".join([good, good.replace(b"doc-0", b"doc-1"), good.replace(b"doc-0", b"doc-2"), bad])
        + b"]}"
    )
    r = client.post(ANTHROPIC, content=body, headers={"x-api-key": api_key, "content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error"
    assert r.json()["error"]["message"].startswith(message)
    assert counts(session) == before


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"requests": [REQ], "colour": "red"}', 422, "colour"),  # unknown member after the requests
        (b'{"requests": [REQ], "requests": [REQ]}', 422, "requests"),  # given twice
        (b'{"metadata": {}}', 422, "requests"),
        (b'{"requests": {"a": 1}}', 422, "requests"),
        (b'{"requests": []}', 422, "requests"),
        (b'{"requests": [REQ]} trailing', 400, None),
        (b'{"requests": [REQ]', 400, None),
        (b'{"requests": [REQ] "metadata": {}}', 400, None),
        (b"[REQ]", 400, None),
        (b"", 400, None),
    ],
)
def test_a_malformed_body_is_refused_and_stores_nothing(
    client: TestClient, auth: dict[str, str], session: Session, body: bytes, status: int, field: str | None
) -> None:
    before = counts(session)
    content = body.replace(b"REQ", json.dumps(request(0)).encode())
    r = client.post("/v1/batches", content=content, headers=auth | {"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    assert counts(session) == before


DOCUMENT: dict[str, Any] = {
    "metadata": {"k": "v é"},
    "requests": [
        {"s": 'a "quoted" \\ string \u00e9 \U0001f600 \u6f22', "n": [0, -1, 12345678901234567890123, 1.5e-7, 2e300]},
        123456789,
        "a string item",
        [True, False, None, {}, [], ""],
        {"nested": {"deep": [[[{"x": "\u0000"}]]]}},
        -0.0,
    ],
    "completion_window": "24h",
}


@pytest.mark.parametrize("window", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-32-le"])
@pytest.mark.parametrize("spaces", [False, True])
def test_where_the_window_cuts_the_text_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, window: int, encoding: str, spaces: bool
) -> None:
    monkeypatch.setattr(json_stream, "WINDOW", window)
    text = json.dumps(DOCUMENT, ensure_ascii=False, indent=3 if spaces else None)
    members: dict[str, Any] = {}
    items = list(
        json_stream.read_object(io.BytesIO(text.encode(encoding)), array="requests", on_member=members.__setitem__)
    )
    assert [i.value for i in items] == DOCUMENT["requests"]
    assert [i.index for i in items] == list(range(len(DOCUMENT["requests"])))
    assert members == {"metadata": DOCUMENT["metadata"], "completion_window": "24h"}
    # An item is NUL-free exactly when its text holds no NUL escape.
    assert [i.nul_free for i in items] == [True, True, True, True, False, True]
