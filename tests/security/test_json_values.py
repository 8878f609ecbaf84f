"""Issue 14.1: values no later step can store or send (NaN, +/-Infinity, lone surrogates, integers of more than
4,300 digits, nesting past the depth limit) and datetimes outside what UTC can hold are refused at validation,
the same way on every path: a 4xx naming the field, nothing stored. Each case was a 500 on at least one path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response  # what Starlette's TestClient answers with
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.config import Settings
from service.dropins.openai_objects import ENDPOINT
from service.models import Batch, Job, Schedule
from service.validation import MAX_DEPTH, MAX_INT_DIGITS

pytestmark = pytest.mark.security

MODEL = "MiniMax-M2.7"
MESSAGES = '[{"role": "user", "content": "hi"}]'


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": str(tmp_path / "files")})


@pytest.fixture
def raw(client: TestClient) -> TestClient:
    # A server error is answered as behind uvicorn (a 500), not raised into the test.
    return TestClient(client.app, raise_server_exceptions=False)


@dataclass(frozen=True)
class Value:
    """JSON text for `params.x`, and what the field named in the refusal must start with, below `params.x`."""

    text: str
    inner: str = ""


VALUES = {
    "nan": Value("NaN"),
    "infinity": Value("Infinity"),
    "minus-infinity": Value("-Infinity"),
    "overflowing-float": Value("1e400"),
    "nan-in-a-list": Value("[1, 2, NaN]", "[2]"),
    "lone-surrogate": Value('"a\\ud800b"'),
    "lone-low-surrogate-deep": Value('{"k": ["ok", "\\udc00"]}', ".k[1]"),
    "surrogate-in-a-key": Value('{"\\ud83d": 1}', ".\\ud83d"),
    "huge-int": Value("9" * (MAX_INT_DIGITS + 1)),
    "huge-negative-int": Value("-" + "9" * 10_000),
    "nested-past-the-limit": Value("[" * (MAX_DEPTH + 10) + "]" * (MAX_DEPTH + 10), "[0][0]"),
    "nested-400-deep": Value('{"a":' * 400 + "1" + "}" * 400, ".a.a"),
}


@dataclass
class Path_:
    """One way in: how to send a request holding `params.x = VALUE`, and the field that names it there."""

    send: Callable[[TestClient, dict[str, str], str], Response]
    field: str  # the field of params.x on this path
    shape: str = "ours"  # ours | anthropic | openai
    statuses: tuple[int, ...] = (400,)


def params(value: str) -> str:
    return f'{{"max_tokens": 5, "messages": {MESSAGES}, "x": {value}}}'


def line(value: str, custom_id: str = "r1") -> str:
    return f'{{"custom_id": "{custom_id}", "model": "{MODEL}", "params": {params(value)}}}'


def job(value: str) -> str:
    return f'{{"model": "{MODEL}", "params": {params(value)}}}'


JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}


def _post(path: str, body: Callable[[str], str], headers: dict[str, str] = JSON) -> Callable[..., Response]:
    def send(c: TestClient, auth: dict[str, str], value: str) -> Response:
        return c.post(path, content=body(value).encode(), headers={**auth, **headers})

    return send


def _multipart(c: TestClient, auth: dict[str, str], value: str) -> Response:
    return c.post("/v1/batches", files={"file": ("in.jsonl", line(value).encode())}, headers=auth)


def _openai(c: TestClient, auth: dict[str, str], value: str) -> Response:
    body = f'{{"model": "{MODEL}", "max_tokens": 5, "messages": {MESSAGES}, "x": {value}}}'
    text = f'{{"custom_id": "r1", "method": "POST", "url": "{ENDPOINT}", "body": {body}}}\n'
    up = c.post(
        "/openai/v1/files", files={"file": ("in.jsonl", text.encode())}, data={"purpose": "batch"}, headers=auth
    )
    assert up.status_code == 200, up.text
    create = {"input_file_id": up.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
    return c.post("/openai/v1/batches", json=create, headers=auth)


def _schedule(template: Callable[[str], str]) -> Callable[[str], str]:
    return lambda v: f'{{"name": "s", "cron": "0 9 * * *", "template": {template(v)}}}'


def _documents_schedule(value: str) -> str:
    source = f'{{"directory": "/nowhere", "model": "{MODEL}", "prompt": "{{document}}", "params": {{"x": {value}}}}}'
    return f'{{"name": "s", "cron": "0 9 * * *", "template": {{"documents": {source}}}}}'


def _anthropic(value: str) -> str:
    body = f'{{"model": "{MODEL}", "max_tokens": 5, "messages": {MESSAGES}, "x": {value}}}'
    request = f'{{"custom_id": "r1", "params": {body}}}'
    return f'{{"requests": [{request}]}}'


PATHS = {
    "job": Path_(_post("/v1/jobs", job), "params.x"),
    "job-dry-run": Path_(_post("/v1/jobs?dry_run=true", job), "params.x"),
    "batch-json": Path_(
        _post("/v1/batches", lambda v: f'{{"requests": [{line("1", "r0")}, {line(v)}]}}'), "requests[1].params.x"
    ),
    "batch-json-dry-run": Path_(
        _post("/v1/batches?dry_run=true", lambda v: f'{{"requests": [{line(v)}]}}'), "requests[0].params.x"
    ),
    "batch-jsonl": Path_(
        _post("/v1/batches", lambda v: line("1", "r0") + "\n" + line(v), NDJSON), "requests[1].params.x"
    ),
    "batch-multipart": Path_(_multipart, "requests[0].params.x"),
    "anthropic-dropin": Path_(_post("/anthropic/v1/messages/batches", _anthropic), "requests[0].params.x", "anthropic"),
    "openai-dropin": Path_(_openai, "body.x", "openai"),
    "schedule-job-template": Path_(
        _post("/v1/schedules", _schedule(lambda v: f'{{"job": {job(v)}}}')), "template.job.params.x"
    ),
    "schedule-batch-template": Path_(
        _post("/v1/schedules", _schedule(lambda v: f'{{"batch": {{"requests": [{line(v)}]}}}}')),
        "template.batch.requests[0].params.x",
    ),
    "schedule-documents-template": Path_(_post("/v1/schedules", _documents_schedule), "template.documents.params.x"),
}


def stored(session: Session) -> tuple[int, ...]:
    return tuple(session.scalar(select(func.count()).select_from(t)) or 0 for t in (Job, Batch, Schedule))


def field_of(r: Response, shape: str) -> str | None:
    body = r.json()
    if shape == "openai":
        return body["error"]["param"]  # type: ignore[no-any-return]
    if shape == "anthropic":
        assert body["type"] == "error"
        return body["error"]["message"].split(":", 1)[0]  # type: ignore[no-any-return]
    return body["error"]["field"]  # type: ignore[no-any-return]


# Each root on every path; every spelling of them on a single job and on a JSONL line.
ROOTS = ("nan", "minus-infinity", "lone-surrogate", "huge-int", "nested-400-deep")
CASES = [
    pytest.param(PATHS[p], VALUES[v], id=f"{p}-{v}")
    for p in PATHS
    for v in (VALUES if p in ("job", "batch-jsonl") else ROOTS)
]


@pytest.mark.parametrize(("path", "value"), CASES)
def test_an_unstorable_value_is_a_400_naming_its_field_on_every_path(
    raw: TestClient, auth: dict[str, str], session: Session, path: Path_, value: Value
) -> None:
    before = stored(session)
    r = path.send(raw, auth, value.text)
    assert r.status_code in path.statuses, (r.status_code, r.text[:300])
    named = field_of(r, path.shape)
    assert named is not None
    assert named.startswith(path.field + value.inner), (named, r.text[:300])
    assert stored(session) == before


def test_the_same_value_is_refused_the_same_way_on_each_path(raw: TestClient, auth: dict[str, str]) -> None:
    # One rule, one wording: a NaN reads the same whether it came as a job, a batch line or a template.
    reasons = set()
    for name in ("job", "batch-json", "batch-jsonl", "schedule-job-template", "schedule-batch-template"):
        r = PATHS[name].send(raw, auth, "NaN")
        reasons.add(r.json()["error"]["message"].rsplit(": ", 1)[-1])
    assert reasons == {"NaN is not a JSON number; send a finite number"}


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs", "/v1/schedules", "/v1/webhook-endpoints", "/v1/batches", "/anthropic/v1/messages/batches"],
)
def test_nesting_past_what_the_parser_takes_is_a_400(raw: TestClient, auth: dict[str, str], path: str) -> None:
    deep = "[" * 5000 + "]" * 5000
    r = raw.post(path, content=f'{{"requests": {deep}, "params": {deep}}}', headers={**auth, **JSON})
    assert r.status_code == 400, r.text[:300]
    assert "nested more than" in r.text


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"url": "https://example.com/hook", "description": "a\\udfffb"}', "description"),
        ('{"url": "https://example.com/\\ud800"}', "url"),
        ('{"url": "https://example.com/hook", "event_types": ["job.succeeded", "\\ud800"]}', "event_types[1]"),
    ],
)
def test_a_lone_surrogate_anywhere_in_a_body_is_a_400(
    raw: TestClient, auth: dict[str, str], body: str, where: str
) -> None:
    r = raw.post("/v1/webhook-endpoints", content=body, headers={**auth, **JSON})
    assert r.status_code == 400, r.text[:300]
    assert r.json()["error"]["field"] == where


# --- JSON text inside other fields: batch metadata as a multipart field or an NDJSON query parameter -----------


@pytest.mark.parametrize(
    "metadata",
    [
        '{"a":' * 400 + '"x"' + "}" * 400,
        "[" * 20_000,
        '{"k": NaN}',
        '{"k": "\\ud800"}',
        '{"k": ' + "9" * 5000 + "}",
    ],
    ids=["nested-400", "nested-20000", "nan", "surrogate", "huge-int"],
)
def test_batch_metadata_as_json_text_is_checked_the_same(
    raw: TestClient, auth: dict[str, str], session: Session, metadata: str
) -> None:
    before = stored(session)
    r = raw.post("/v1/batches", files={"file": ("in.jsonl", line("1").encode())}, data={"metadata": metadata},
                 headers=auth)  # fmt: skip
    assert r.status_code in (400, 422), r.text[:300]
    assert r.json()["error"]["field"].startswith("metadata")
    r = raw.post("/v1/batches", params={"metadata": metadata}, content=line("1"), headers={**auth, **NDJSON})
    assert r.status_code in (400, 422), r.text[:300]
    assert r.json()["error"]["field"].startswith("metadata")
    assert stored(session) == before


def test_documents_params_are_checked_the_same(raw: TestClient, auth: dict[str, str]) -> None:
    for value in ("NaN", "1e400", "[" * 200 + "]" * 200):
        r = raw.post(
            "/v1/batches/documents",
            data={"model": MODEL, "prompt": "Summarize {document}", "params": f'{{"max_tokens": 5, "x": {value}}}'},
            files={"files": ("a.txt", b"hello")},
            headers=auth,
        )
        assert r.status_code in (400, 422), r.text[:300]
        assert r.json()["error"]["field"].startswith("params"), r.text[:300]


def test_values_within_the_rules_are_accepted(raw: TestClient, auth: dict[str, str], session: Session) -> None:
    nested = "[" * (MAX_DEPTH - 3) + "1" + "]" * (MAX_DEPTH - 3)  # params -> x -> 61 lists: within the limit
    for value in ("1.5e300", "9" * MAX_INT_DIGITS, '"emoji \\ud83d\\ude00 pair"', nested):
        r = raw.post("/v1/jobs?dry_run=true", content=job(value), headers={**auth, **JSON})
        assert r.status_code == 200, (value[:40], r.text[:300])


# --- datetimes -----------------------------------------------------------------------------------------------

EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]


@pytest.mark.parametrize("moment", EDGE_TIMES)
@pytest.mark.parametrize(
    ("path", "name"),
    [("/v1/jobs", "created_after"), ("/v1/jobs", "created_before"), ("/v1/usage", "from"), ("/v1/usage", "to")],
)
def test_an_edge_datetime_in_a_query_is_a_4xx_naming_it(
    raw: TestClient, auth: dict[str, str], path: str, name: str, moment: str
) -> None:
    r = raw.get(path, params={name: moment}, headers=auth)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["field"] == name
    assert "out of range" in r.json()["error"]["message"]


@pytest.mark.parametrize("moment", EDGE_TIMES)
@pytest.mark.parametrize("name", ["start_at", "end_at"])
def test_an_edge_datetime_on_a_schedule_is_a_4xx_naming_it(
    raw: TestClient, auth: dict[str, str], session: Session, name: str, moment: str
) -> None:
    template = {"job": {"model": MODEL, "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}}}
    body = {"name": "s", "cron": "0 9 * * *", "template": template}
    before = stored(session)
    r = raw.post("/v1/schedules", json={**body, name: moment}, headers=auth)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["field"] == name
    created = raw.post("/v1/schedules", json=body, headers=auth)
    assert created.status_code == 201, created.text
    r = raw.patch(f"/v1/schedules/{created.json()['id']}", json={name: moment}, headers=auth)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["field"] == name
    assert stored(session)[2] == before[2] + 1


def test_wide_but_valid_time_ranges_still_work(raw: TestClient, auth: dict[str, str]) -> None:
    r = raw.get("/v1/jobs", params={"created_after": "0001-02-01T00:00:00Z", "created_before": "9999-11-30T00:00:00Z"},
                headers=auth)  # fmt: skip
    assert r.status_code == 200, r.text
    r = raw.get(
        "/v1/usage", params={"from": "1970-01-01T00:00:00+14:00", "to": "9999-01-01T00:00:00-14:00"}, headers=auth
    )
    assert r.status_code == 200, r.text
