"""Hostile bodies: oversized, deeply nested, not UTF-8, NUL bytes, huge numbers, custom_id and metadata abuse.

Every one must be refused with a 4xx and the error shape, never a 500 or a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.config import Settings

pytestmark = pytest.mark.security

DEEP = 100_000


def job(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "MiniMax-M2.7",
        "params": {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]},
    }
    out.update(overrides)
    return out


def line(custom_id: str = "r1", **params: Any) -> dict[str, Any]:
    body = {"max_tokens": 64, "messages": [{"role": "user", "content": "hi"}], **params}
    return {"custom_id": custom_id, "model": "MiniMax-M2.7", "params": body}


def refused(r: Any, *statuses: int) -> None:
    """A client error with our error shape (or the drop-in's), never a server error."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert "error" in r.json(), r.text[:500]


@pytest.fixture
def raw(client: TestClient) -> TestClient:
    # The server's own exceptions become 500 answers, as behind uvicorn, instead of being raised into the test.
    return TestClient(client.app, raise_server_exceptions=False)


@pytest.fixture
def small_client(settings: Settings, app: FastAPI) -> Iterator[TestClient]:
    """The same database, with 64 KB / 256 KB body limits, so "too large" costs no memory."""
    small = create_app(settings.model_copy(update={"max_body_bytes": 64 * 1024, "max_upload_bytes": 256 * 1024}))
    small.state.session_factory = app.state.session_factory
    with TestClient(small, raise_server_exceptions=False) as c:
        yield c


# --- sizes -------------------------------------------------------------------------------------------------------


def test_oversized_json_body_is_413(small_client: TestClient, auth: dict[str, str]) -> None:
    body = json.dumps(job(metadata={"a": "x" * 100}, params={"max_tokens": 5, "pad": "x" * 100_000}))
    r = small_client.post("/v1/jobs", content=body, headers={**auth, "content-type": "application/json"})
    refused(r, 413)


def test_oversized_body_without_content_length_is_413(small_client: TestClient, auth: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(200):
            yield b" " * 1024

    r = small_client.post("/v1/jobs", content=chunks(), headers={**auth, "content-type": "application/json"})
    refused(r, 413)


def test_oversized_jsonl_upload_is_413(small_client: TestClient, auth: dict[str, str]) -> None:
    one = json.dumps(line("r0")).encode() + b"\n"
    body = one * (300 * 1024 // len(one) + 1)
    r = small_client.post("/v1/batches", content=body, headers={**auth, "content-type": "application/x-ndjson"})
    refused(r, 413)


def test_one_oversized_jsonl_line_is_refused(small_client: TestClient, auth: dict[str, str]) -> None:
    # A single 300 KB line with no newline in it: larger than the whole upload limit.
    body = json.dumps(line("r0", pad="x" * 300 * 1024)).encode()
    r = small_client.post("/v1/batches", content=body, headers={**auth, "content-type": "application/x-ndjson"})
    refused(r, 413)


def test_a_long_jsonl_line_within_the_limit_is_not_a_server_error(client: TestClient, auth: dict[str, str]) -> None:
    body = b"\n".join([json.dumps(line("ok")).encode(), b'{"custom_id": "' + b"a" * 2_000_000 + b'"}'])
    r = client.post("/v1/batches", content=body, headers={**auth, "content-type": "application/x-ndjson"})
    refused(r)
    assert "line 2" in r.text or "requests[1]" in r.text


# --- nesting -----------------------------------------------------------------------------------------------------

NESTED = b"[" * DEEP + b"]" * DEEP
NESTED_OBJECT = b'{"a":' * DEEP + b"1" + b"}" * DEEP


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs",
        "/v1/webhook-endpoints",
        "/v1/schedules",
        "/anthropic/v1/messages/batches",
        "/openai/v1/batches",
    ],
)
def test_deeply_nested_json_is_4xx(raw: TestClient, auth: dict[str, str], path: str) -> None:
    r = raw.post(path, content=NESTED, headers={**auth, "content-type": "application/json"})
    refused(r)


def test_deeply_nested_params_inside_a_valid_job_is_4xx(raw: TestClient, auth: dict[str, str]) -> None:
    body = (
        b'{"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], '
        b'"extra": ' + NESTED_OBJECT + b"}}"
    )
    r = raw.post("/v1/jobs", content=body, headers={**auth, "content-type": "application/json"})
    refused(r)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_deeply_nested_batch_body_is_4xx(raw: TestClient, auth: dict[str, str], content_type: str) -> None:
    r = raw.post("/v1/batches", content=NESTED, headers={**auth, "content-type": content_type})
    refused(r)


# --- encoding ----------------------------------------------------------------------------------------------------

INVALID_UTF8 = (
    b'{"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}}'
)


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/webhook-endpoints", "/anthropic/v1/messages/batches"])
def test_invalid_utf8_json_is_4xx(raw: TestClient, auth: dict[str, str], path: str) -> None:
    r = raw.post(path, content=INVALID_UTF8, headers={**auth, "content-type": "application/json"})
    refused(r)


@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_invalid_utf8_batch_is_4xx(raw: TestClient, auth: dict[str, str], content_type: str) -> None:
    r = raw.post(
        "/v1/batches", content=b"\xff\xfe\xfd\n" + INVALID_UTF8, headers={**auth, "content-type": content_type}
    )
    refused(r)


def test_invalid_utf8_in_headers_and_query_is_4xx(raw: TestClient, auth: dict[str, str]) -> None:
    r = raw.get("/v1/jobs?metadata%5Bk%5D=%FF%FE", headers=auth)
    assert r.status_code < 500, r.text
    r = raw.get("/v1/jobs", headers={b"Authorization": b"Bearer mmj_\xff\xfe"})
    refused(r, 401)


# --- NUL bytes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(job(metadata={"k": "a\u0000b"}), id="metadata-value"),
        pytest.param(job(metadata={"a\u0000b": "v"}), id="metadata-key"),
        pytest.param(job(params={"max_tokens": 5, "messages": [{"role": "user", "content": "a\u0000b"}]}), id="params"),
        pytest.param(job(webhook_url="https://example.com/\u0000"), id="webhook_url"),
    ],
)
def test_nul_bytes_in_a_job_are_not_a_server_error(raw: TestClient, auth: dict[str, str], body: dict[str, Any]) -> None:
    r = raw.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code < 500, r.text[:500]


def test_nul_byte_in_batch_metadata_is_not_a_server_error(raw: TestClient, auth: dict[str, str]) -> None:
    body = {"requests": [line("r1")], "metadata": {"k": "\u0000"}}
    r = raw.post("/v1/batches", json=body, headers=auth)
    assert r.status_code < 500, r.text[:500]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/v1/jobs/job_%00x"),
        pytest.param("POST", "/v1/jobs/job_%00x/cancel"),
        pytest.param("GET", "/v1/batches/bat_%00x"),
        pytest.param("GET", "/v1/schedules/sch_%00"),
        pytest.param("GET", "/v1/webhook-endpoints/we_%00"),
        pytest.param("GET", "/v1/webhook-deliveries/whd_%00"),
        pytest.param("GET", "/openai/v1/batches/batch_%00"),
        pytest.param("GET", "/anthropic/v1/messages/batches/msgbatch_%00"),
        pytest.param("GET", "/v1/jobs?cursor=%00"),
        pytest.param("GET", "/v1/jobs?metadata%5Bk%5D=%00"),
        pytest.param("GET", "/v1/jobs?batch_id=%00"),
        ("GET", "/v1/files/file_%00"),
        ("GET", "/openai/v1/files/file-%00"),
    ],
)
def test_nul_byte_in_an_id_or_query_is_4xx(raw: TestClient, auth: dict[str, str], method: str, path: str) -> None:
    refused(raw.request(method, path, headers=auth))


def test_nul_byte_in_the_key_is_401(raw: TestClient) -> None:
    refused(raw.get("/v1/jobs", headers={"x-api-key": "mmj_\u0000"}), 401)


# --- numbers -----------------------------------------------------------------------------------------------------

HUGE = 10**40


@pytest.mark.parametrize(
    "body",
    [
        job(priority=HUGE),
        job(max_attempts=HUGE),
        job(params={"max_tokens": HUGE, "messages": [{"role": "user", "content": "x"}]}),
        job(params={"max_tokens": -HUGE, "messages": [{"role": "user", "content": "x"}]}),
        job(params={"max_tokens": 1e308, "messages": [{"role": "user", "content": "x"}]}),
        job(params={"max_tokens": 5, "temperature": HUGE, "messages": [{"role": "user", "content": "x"}]}),
    ],
    ids=["priority", "max_attempts", "max_tokens", "negative-max_tokens", "float-max_tokens", "temperature"],
)
def test_huge_numbers_are_4xx(raw: TestClient, auth: dict[str, str], body: dict[str, Any]) -> None:
    r = raw.post("/v1/jobs", json=body, headers=auth)
    refused(r)


def test_a_4300_digit_integer_is_4xx(raw: TestClient, auth: dict[str, str]) -> None:
    body = b'{"model": "MiniMax-M2.7", "priority": ' + b"9" * 5000 + b', "params": {}}'
    r = raw.post("/v1/jobs", content=body, headers={**auth, "content-type": "application/json"})
    refused(r)


@pytest.mark.parametrize("limit", [str(HUGE), "-1", "0", "nan"])
def test_huge_query_numbers_are_4xx(raw: TestClient, auth: dict[str, str], limit: str) -> None:
    refused(raw.get(f"/v1/jobs?limit={limit}", headers=auth), 422, 400)


def test_huge_completion_window_is_4xx(raw: TestClient, auth: dict[str, str]) -> None:
    r = raw.post("/v1/batches", json={"requests": [line()], "completion_window": "99999999999999h"}, headers=auth)
    refused(r)


def test_huge_completion_window_in_jsonl_query_is_4xx(raw: TestClient, auth: dict[str, str]) -> None:
    r = raw.post(
        "/v1/batches?completion_window=99999999999999h",
        content=json.dumps(line()),
        headers={**auth, "content-type": "application/x-ndjson"},
    )
    refused(r)


# --- custom_id and metadata abuse --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "custom_id",
    ["a" * 65, "", "../../etc/passwd", "a b", "é", "a\u0000", "a\nb", 123, None, ["x"], {"x": 1}],
    ids=["too-long", "empty", "path", "space", "non-ascii", "nul", "newline", "int", "null", "list", "object"],
)
def test_bad_custom_ids_are_refused(raw: TestClient, auth: dict[str, str], custom_id: Any) -> None:
    r = raw.post("/v1/batches", json={"requests": [{**line(), "custom_id": custom_id}]}, headers=auth)
    refused(r, 400, 422)


def test_duplicate_custom_ids_are_refused(raw: TestClient, auth: dict[str, str]) -> None:
    refused(raw.post("/v1/batches", json={"requests": [line("a"), line("a")]}, headers=auth), 400, 422)


@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"": "v"},
        {"k": "v" * 513},
        {"k": 1},
        {"k": None},
        {"k": ["v"]},
        {"k": {"nested": "v"}},
        {"k": True},
        ["k", "v"],
        "k=v",
    ],
    ids=["17-keys", "long-key", "empty-key", "long-value", "int", "null", "list", "object", "bool", "array", "string"],
)
def test_metadata_abuse_is_422(raw: TestClient, auth: dict[str, str], metadata: Any) -> None:
    refused(raw.post("/v1/jobs", json=job(metadata=metadata), headers=auth), 422)
    refused(raw.post("/v1/batches", json={"requests": [line()], "metadata": metadata}, headers=auth), 400, 422)


def test_metadata_filter_abuse_is_not_a_server_error(raw: TestClient, auth: dict[str, str]) -> None:
    for query in [
        "metadata[" + "k" * 1000 + "]=v",
        "metadata[k]=" + "v" * 10_000,
        "metadata[]=v",
        "metadata=v",
        "metadata[k'%20OR%201=1--]=v",
    ]:
        r = raw.get(f"/v1/jobs?{query}", headers=auth)
        assert r.status_code < 500, (query, r.text[:300])
