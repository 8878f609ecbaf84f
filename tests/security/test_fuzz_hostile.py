"""Hostile values in every request body, batch line, form field and query parameter: never a 5xx (issue 14.1).

Hypothesis puts a value from a hostile strategy (NaN, +/-Infinity, `1e400`, integers past 4,300 digits, lone
surrogates, NUL, very long strings, nesting around and far past the depth limit, edge dates, loopback URLs in
Unicode spellings) into one place of an otherwise valid request, for every operation of the OpenAPI document
that takes a body or a query, batch lines (JSON, JSONL, multipart) and both drop-ins included. Every answer must be
below 500, and a refusal must carry the error shape of the API that gave it. `test_every_input_is_driven` fails
when an operation or query parameter is added without a driver here.

Runs against the fuzzer's own committed database (`fuzz_app`), derandomized so a failure reproduces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx2 import Response  # what Starlette's TestClient answers with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.app import create_app
from service.config import Settings
from service.dropins.openai_objects import ENDPOINT
from service.validation import MAX_DEPTH, MAX_INT_DIGITS
from tests.db import database_url

pytestmark = pytest.mark.security


def examples(n: int) -> settings:
    """Hypothesis settings: `n` derandomized examples (the suite stays within a few minutes in CI)."""
    return settings(
        max_examples=n, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )


FUZZ = examples(10)
FEW = examples(4)

# --- the hostile strategy ------------------------------------------------------------------------------------


def _deep(n: int) -> list[str]:
    return ["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n]


EDGE_DATES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
    "2026-02-30T00:00:00Z",
    "1970-01-01T00:00:00",
    "0000-00-00T00:00:00Z",
    "+275760-09-13T00:00:00Z",
]
LOOPBACK_URLS = [
    "http://127.0.0.\u2460/",
    "http://127.0.0\u30021/",
    "http://foo.localhost\u3002/",
    "http://127.0.0.%31/",
    "http://127.0.0.1\\.example.com/",
    "http://[::ffff:127.0.0.1]/",
    "http://169.254.169.254/latest/meta-data/",
]
# JSON text: each is a value no later step can store or send, or sits on a boundary of one.
ATOMS = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "-0",
    "9" * (MAX_INT_DIGITS + 1),
    "-" + "9" * 6000,
    "9" * MAX_INT_DIGITS,
    "123456789012345678901234567890",
    '"\\ud800"',
    '"a\\udfffb"',
    '"\\ud83d\\ude00"',
    '"a\\u0000b"',
    '"\\u0000"',
    json.dumps("x" * 300_000),
    '""',
    "null",
    "true",
    "[]",
    "{}",
    *(json.dumps(d) for d in EDGE_DATES),
    *(json.dumps(u) for u in LOOPBACK_URLS),
    *_deep(MAX_DEPTH - 2),
    *_deep(MAX_DEPTH + 1),
    *_deep(400),
    *_deep(1500),
]
# Plain strings for query parameters and form fields (where JSON has no say).
TEXTS = [
    "",
    "\x00",
    "a\x00b",
    "NaN",
    "Infinity",
    "-1",
    "0",
    "9" * 5000,
    "x" * 20_000,
    "\u2460\u2461",
    "\uff11\uff12\uff13",
    "'; DROP TABLE jobs; --",
    "../../etc/passwd",
    "metadata[k]",
    *EDGE_DATES,
    *LOOPBACK_URLS,
    *_deep(30),
    '{"k": NaN}',
    '{"k": "\\ud800"}',
    '{"k": ' + "9" * 5000 + "}",
]

fragments: st.SearchStrategy[str] = st.recursive(
    st.one_of(
        st.sampled_from(ATOMS),
        st.text(max_size=30).map(json.dumps),
        st.integers().map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(st.sampled_from(['"a"', '"\\ud800"', '"\\u0000"', '""', '"model"']), inner), max_size=3).map(
            lambda kvs: "{" + ", ".join(f"{k}: {v}" for k, v in kvs) + "}"
        ),
    ),
    max_leaves=4,
)
texts: st.SearchStrategy[str] = st.one_of(st.sampled_from(TEXTS), st.text(max_size=40))

# --- valid requests with one hole each -----------------------------------------------------------------------

HOLE = "@@"
MODEL = "MiniMax-M2.7"
PARAMS = '{"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "x": 1}'
JOB = f'{{"model": "{MODEL}", "params": {PARAMS}}}'
LINE = f'{{"custom_id": "r1", "model": "{MODEL}", "params": {PARAMS}}}'


def holes(template: str, slots: dict[str, str]) -> list[str]:
    """`template` with, for each slot, one JSON value of it replaced by the hole (slots: old -> new text)."""
    out = []
    for old, new in slots.items():
        assert template.count(old) == 1, old
        out.append(template.replace(old, new))
    return out


JOB_BODIES = [
    *holes(
        JOB,
        {
            f'"model": "{MODEL}"': f'"model": {HOLE}',
            f'"params": {PARAMS}': f'"params": {HOLE}',
            '"max_tokens": 16': f'"max_tokens": {HOLE}',
            '"content": "hi"': f'"content": {HOLE}',
            '"role": "user"': f'"role": {HOLE}',
            '"x": 1': f'"x": {HOLE}',
        },
    ),
    *(
        JOB[:-1] + f', "{name}": {HOLE}}}'
        for name in ("metadata", "priority", "max_attempts", "webhook_url", "format", "unknown")
    ),
    f'{{"model": "{MODEL}", "params": {PARAMS}, "metadata": {{"k": {HOLE}}}}}',
    HOLE,
]
LINES = [
    *holes(
        LINE,
        {
            '"custom_id": "r1"': f'"custom_id": {HOLE}',
            f'"model": "{MODEL}"': f'"model": {HOLE}',
            f'"params": {PARAMS}': f'"params": {HOLE}',
            '"x": 1': f'"x": {HOLE}',
            '"content": "hi"': f'"content": {HOLE}',
        },
    ),
    LINE[:-1] + f', "format": {HOLE}}}',
    HOLE,
]
BATCH_BODIES = [
    *(f'{{"requests": [{line}]}}' for line in LINES),
    f'{{"requests": {HOLE}}}',
    *(f'{{"requests": [{LINE}], "{name}": {HOLE}}}' for name in ("metadata", "webhook_url", "completion_window")),
    HOLE,
]
SCHEDULE = f'{{"name": "s", "cron": "0 9 * * *", "template": {{"job": {JOB}}}}}'
SCHEDULE_BODIES = [
    *holes(SCHEDULE, {'"name": "s"': f'"name": {HOLE}', '"cron": "0 9 * * *"': f'"cron": {HOLE}'}),
    *(
        SCHEDULE[:-1] + f', "{name}": {HOLE}}}'
        for name in ("timezone", "start_at", "end_at", "overlap", "catchup", "catchup_window", "enabled")
    ),
    *(f'{{"name": "s", "cron": "0 9 * * *", "template": {{"job": {body}}}}}' for body in JOB_BODIES[:6]),
    *(f'{{"name": "s", "cron": "0 9 * * *", "template": {{"batch": {body}}}}}' for body in BATCH_BODIES[:6]),
    f'{{"name": "s", "cron": "0 9 * * *", "template": {{"documents": {{"directory": "/tmp", "model": "{MODEL}", '
    f'"prompt": "{{document}}", "params": {{"x": {HOLE}}}}}}}}}',
    f'{{"name": "s", "cron": "0 9 * * *", "template": {HOLE}}}',
]
SCHEDULE_PATCHES = [f'{{"{name}": {HOLE}}}' for name in ("name", "cron", "timezone", "template", "start_at", "end_at")]
ENDPOINT_BODIES = [
    f'{{"url": {HOLE}}}',
    f'{{"url": "https://example.com/hook", "event_types": {HOLE}}}',
    f'{{"url": "https://example.com/hook", "event_types": ["job.succeeded", {HOLE}]}}',
    f'{{"url": "https://example.com/hook", "description": {HOLE}}}',
]
ENDPOINT_PATCHES = [f'{{"{name}": {HOLE}}}' for name in ("url", "event_types", "description", "enabled")]
UPSTREAM_KEY_BODIES = holes(
    f'{{"api_key": "sk-fuzz-key", "base_url": "https://api.minimax.io", "rate_limits": {{"{MODEL}": {{"rpm": 60}}}}}}',
    {'"sk-fuzz-key"': HOLE, '"https://api.minimax.io"': HOLE, '{"rpm": 60}': HOLE, "60": HOLE},
)
ANTHROPIC_PARAMS = (
    f'{{"model": "{MODEL}", "max_tokens": 16, "messages": [{{"role": "user", "content": "hi"}}], "x": 1}}'
)
ANTHROPIC_BODIES = [
    *(
        f'{{"requests": [{{"custom_id": "r1", "params": {params}}}]}}'
        for params in holes(
            ANTHROPIC_PARAMS,
            {
                f'"model": "{MODEL}"': f'"model": {HOLE}',
                '"x": 1': f'"x": {HOLE}',
                '"content": "hi"': f'"content": {HOLE}',
            },
        )
    ),
    f'{{"requests": [{{"custom_id": {HOLE}, "params": {ANTHROPIC_PARAMS}}}]}}',
    f'{{"requests": [{{"custom_id": "r1", "params": {HOLE}}}]}}',
    f'{{"requests": {HOLE}}}',
    HOLE,
]
OPENAI_BODY = f'{{"model": "{MODEL}", "max_tokens": 16, "messages": [{{"role": "user", "content": "hi"}}], "x": 1}}'
OPENAI_LINES = [
    *(
        f'{{"custom_id": "r1", "method": "POST", "url": "{ENDPOINT}", "body": {body}}}'
        for body in holes(OPENAI_BODY, {'"x": 1': f'"x": {HOLE}', f'"model": "{MODEL}"': f'"model": {HOLE}'})
    ),
    f'{{"custom_id": {HOLE}, "method": "POST", "url": "{ENDPOINT}", "body": {OPENAI_BODY}}}',
    f'{{"custom_id": "r1", "method": "POST", "url": "{ENDPOINT}", "body": {HOLE}}}',
    HOLE,
]
OPENAI_CREATE = [
    *(f'{{"input_file_id": {HOLE}, "endpoint": "{ENDPOINT}", "completion_window": "24h"}}',),
    f'{{"input_file_id": "file-x", "endpoint": {HOLE}, "completion_window": "24h"}}',
    f'{{"input_file_id": "file-x", "endpoint": "{ENDPOINT}", "completion_window": {HOLE}}}',
    f'{{"input_file_id": "file-x", "endpoint": "{ENDPOINT}", "completion_window": "24h", "metadata": {HOLE}}}',
    f'{{"input_file_id": "file-x", "endpoint": "{ENDPOINT}", "completion_window": "24h", '
    f'"output_expires_after": {HOLE}}}',
]

# --- the app and the checks ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ctx:
    client: TestClient
    auth: dict[str, str]
    schedule_id: str
    endpoint_id: str


@pytest.fixture(scope="module")
def ctx(fuzz_app: FastAPI, fuzz_key: str, fake_dns: None) -> Iterator[Ctx]:
    auth = {"Authorization": f"Bearer {fuzz_key}"}
    with TestClient(fuzz_app, raise_server_exceptions=False) as client:
        schedule = client.post("/v1/schedules", content=SCHEDULE, headers={**auth, "content-type": "application/json"})
        assert schedule.status_code == 201, schedule.text
        endpoint = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/hook"}, headers=auth)
        assert endpoint.status_code == 201, endpoint.text
        yield Ctx(client, auth, schedule.json()["id"], endpoint.json()["id"])


def no_server_error(r: Response, shape: str = "ours") -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code < 400:
        return
    body = r.json()
    if r.status_code == 404 and set(body.get("error", {})) == {"type", "message", "field"}:
        return  # no route at all (e.g. an empty path segment): the app's 404, in our shape, whatever the prefix
    if shape == "anthropic":
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
    elif shape == "openai":
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
    else:
        assert set(body["error"]) == {"type", "message", "field"}, body


def fill(template: str, value: str) -> bytes:
    return template.replace(HOLE, value).encode("utf-8", "surrogatepass")


JSON = {"content-type": "application/json"}
NDJSON = {"content-type": "application/x-ndjson"}

# --- one test per way in -------------------------------------------------------------------------------------

BODY_ROUTES = [
    ("POST", "/v1/jobs", JOB_BODIES, "ours"),
    ("POST", "/v1/jobs?dry_run=true", JOB_BODIES, "ours"),
    ("POST", "/v1/batches", BATCH_BODIES, "ours"),
    ("POST", "/v1/batches?dry_run=true", BATCH_BODIES, "ours"),
    ("POST", "/v1/schedules", SCHEDULE_BODIES, "ours"),
    ("PATCH", "/v1/schedules/{schedule_id}", SCHEDULE_PATCHES, "ours"),
    ("POST", "/v1/webhook-endpoints", ENDPOINT_BODIES, "ours"),
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}", ENDPOINT_PATCHES, "ours"),
    ("PUT", "/v1/limits/upstream-key", UPSTREAM_KEY_BODIES, "ours"),
    ("POST", "/anthropic/v1/messages/batches", ANTHROPIC_BODIES, "anthropic"),
    ("POST", "/openai/v1/batches", OPENAI_CREATE, "openai"),
]


@pytest.mark.parametrize(
    ("method", "path", "bodies", "shape"), BODY_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in BODY_ROUTES]
)
def test_json_bodies(ctx: Ctx, method: str, path: str, bodies: list[str], shape: str) -> None:
    url = path.format(schedule_id=ctx.schedule_id, endpoint_id=ctx.endpoint_id)

    @given(body=st.sampled_from(bodies), value=fragments)
    @FUZZ
    def run(body: str, value: str) -> None:
        no_server_error(ctx.client.request(method, url, content=fill(body, value), headers={**ctx.auth, **JSON}), shape)

    run()


@pytest.mark.parametrize("how", ["jsonl", "multipart"])
def test_batch_lines(ctx: Ctx, how: str) -> None:
    @given(line=st.sampled_from(LINES), value=fragments, first_good=st.booleans())
    @FUZZ
    def run(line: str, value: str, first_good: bool) -> None:
        text = (LINE.replace('"r1"', '"r0"') + "\n" if first_good else "").encode() + fill(line, value)
        if how == "jsonl":
            r = ctx.client.post("/v1/batches", content=text, headers={**ctx.auth, **NDJSON})
        else:
            r = ctx.client.post("/v1/batches", files={"file": ("in.jsonl", text)}, headers=ctx.auth)
        no_server_error(r)

    run()


@pytest.mark.parametrize("how", ["jsonl-query", "multipart-field"])
def test_batch_options_as_text(ctx: Ctx, how: str) -> None:
    @given(name=st.sampled_from(["metadata", "webhook_url", "completion_window", "dry_run", "unknown"]), value=texts)
    @FUZZ
    def run(name: str, value: str) -> None:
        if how == "jsonl-query":
            r = ctx.client.post("/v1/batches", params={name: value}, content=LINE, headers={**ctx.auth, **NDJSON})
        else:
            files = {"file": ("in.jsonl", LINE.encode())}
            r = ctx.client.post("/v1/batches", files=files, data={name: value}, headers=ctx.auth)
        no_server_error(r)

    run()


def test_openai_input_files(ctx: Ctx) -> None:
    @given(line=st.sampled_from(OPENAI_LINES), value=fragments)
    @FUZZ
    def run(line: str, value: str) -> None:
        up = ctx.client.post(
            "/openai/v1/files", files={"file": ("in.jsonl", fill(line, value))}, data={"purpose": "batch"},
            headers=ctx.auth,
        )  # fmt: skip
        no_server_error(up, "openai")
        if up.status_code == 200:
            create = {"input_file_id": up.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
            no_server_error(ctx.client.post("/openai/v1/batches", json=create, headers=ctx.auth), "openai")

    run()


FORMS: list[tuple[str, str, dict[str, str], str]] = [
    ("/v1/batches/documents", "files", {"model": MODEL, "prompt": "Summarize {document}", "params": "{}"}, "ours"),
    ("/v1/files", "file", {}, "ours"),
    ("/openai/v1/files", "file", {"purpose": "batch"}, "openai"),
]


@pytest.mark.parametrize(("path", "file_field", "fields", "shape"), FORMS, ids=[f[0] for f in FORMS])
def test_form_fields(ctx: Ctx, path: str, file_field: str, fields: dict[str, str], shape: str) -> None:
    names = [*fields, "purpose", "format", "system", "metadata", "webhook_url"]

    @given(
        name=st.sampled_from(names), value=st.one_of(texts, fragments), content=st.sampled_from([b"hi", LINE.encode()])
    )
    @FUZZ
    def run(name: str, value: str, content: bytes) -> None:
        data = {**fields, name: value}
        url = path + ("?purpose=batch" if path == "/v1/files" and name != "purpose" else "")
        r = ctx.client.post(url, data=data, files={file_field: ("in.txt", content)}, headers=ctx.auth)
        no_server_error(r, shape)

    run()


def _query_params(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (method.upper(), path, p["name"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
        for p in op.get("parameters", [])
        if p["in"] == "query"
    ]


SPEC: dict[str, Any] = create_app(Settings(database_url=database_url("unused"), minimax_api_key=None)).openapi()
QUERIES = _query_params(SPEC)


@pytest.mark.parametrize(("method", "path", "name"), QUERIES, ids=[f"{m} {p} {n}" for m, p, n in QUERIES])
def test_query_parameters(ctx: Ctx, method: str, path: str, name: str) -> None:
    ids = {"job_id": "job_x", "batch_id": "batch_x", "schedule_id": ctx.schedule_id, "endpoint_id": ctx.endpoint_id,
           "delivery_id": "whd_x", "message_batch_id": "msgbatch_x", "file_id": "file-x"}  # fmt: skip
    url = path.format(**ids)
    shape = "anthropic" if path.startswith("/anthropic") else "openai" if path.startswith("/openai") else "ours"
    # A valid body of the right kind, so the query parameter is what is tried.
    body: dict[str, Any] = {}
    headers = dict(ctx.auth)
    if method == "POST" and path == "/v1/jobs":
        body, headers = {"content": JOB}, {**headers, **JSON}
    elif method == "POST" and path == "/v1/files":
        body = {"files": {"file": ("in.jsonl", LINE.encode())}}
    elif method == "POST":
        body, headers = {"content": LINE}, {**headers, **NDJSON}

    @given(value=texts, repeat=st.booleans())
    @FEW
    def run(value: str, repeat: bool) -> None:
        params: dict[str, str | list[str]] = {name: [value, value] if repeat else value}
        no_server_error(ctx.client.request(method, url, params=params, headers=headers, **body), shape)

    run()


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/{}",
        "/v1/batches/{}",
        "/v1/batches/{}/results",
        "/v1/schedules/{}",
        "/v1/schedules/{}/runs",
        "/v1/webhook-endpoints/{}",
        "/v1/webhook-deliveries/{}",
        "/v1/files/{}",
        "/anthropic/v1/messages/batches/{}",
        "/openai/v1/batches/{}",
        "/openai/v1/files/{}/content",
    ],
)
def test_path_ids(ctx: Ctx, path: str) -> None:
    shape = "anthropic" if path.startswith("/anthropic") else "openai" if path.startswith("/openai") else "ours"

    @given(value=st.one_of(texts, st.sampled_from(["%00", "%ED%A0%80", "%FF", "..%2F..", "%2e%2e"])))
    @FEW
    def run(value: str) -> None:
        from urllib.parse import quote

        segment = value if value.startswith("%") else quote(value, safe="")
        no_server_error(ctx.client.get(path.format(segment[:3000]), headers=ctx.auth), shape)

    run()


def test_every_input_is_driven() -> None:
    """Each operation of the OpenAPI document with a body has a driver above, and every query parameter is fuzzed
    (by `test_query_parameters`, which reads them from the document)."""
    driven = {(m, p.split("?")[0]) for m, p, _, _ in BODY_ROUTES} | {
        ("POST", "/v1/batches"),  # JSONL and multipart: test_batch_lines, test_batch_options_as_text
        *(("POST", f[0]) for f in FORMS),
    }
    with_body = {
        (method.upper(), path.replace("{schedule_id}", "{schedule_id}"))
        for path, ops in SPEC["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert with_body <= driven, sorted(with_body - driven)
    assert len(QUERIES) >= 20
