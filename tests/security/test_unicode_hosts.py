"""Issue 14.7: Unicode and other spellings of loopback are read as the host they name, by one rule set, on every
path that takes a URL: media URLs (jobs, batch lines, both drop-ins, schedule templates) and webhook URLs (jobs,
batches, webhook endpoints, schedule templates). Before, `http://127.0.0.①/` passed the media check."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response  # what Starlette's TestClient answers with

from service import netguard
from service.config import Settings
from service.dropins.openai_objects import ENDPOINT
from service.media.validation import remote_url_problem

pytestmark = pytest.mark.security

M3 = "MiniMax-M3"
# (URL, what its host is read as): each reaches this machine, or is no host at all.
SPELLINGS = [
    ("http://127.0.0.\u2460/", "127.0.0.1"),  # circled digit one
    ("http://127.0.0\u30021/", "127.0.0.1"),  # ideographic full stop
    ("http://foo.localhost\u3002/", "foo.localhost"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "127.0.0.1"),  # fullwidth digits
    ("http://127\uff0e0\uff0e0\uff0e1:8080/x", "127.0.0.1"),  # fullwidth full stops
    ("http://127\uff610\uff610\uff611/", "127.0.0.1"),  # halfwidth ideographic full stops
    ("http://127.0.0.%31/", "127.0.0.1"),  # percent-encoded
    ("http://LOCALHOST\uff0e/", "localhost"),
    ("http://\u2113ocalhost/", "localhost"),  # script small l
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "localhost"),  # fullwidth letters
    ("http://loc\u200balhost/", "localhost"),  # a zero-width space inside
    ("http://169.254.169.\u2461\u2464\u2463/", "169.254.169.254"),  # the metadata service, circled
    ("http://\u2468.\u2462.\u2462.\u2469/", "9.3.3.10"),  # circled, public: mapped, then allowed
]
LOOPBACK = [u for u, host in SPELLINGS if host != "9.3.3.10"]
# Read one way by Python and another by WHATWG parsers: refused outright.
AMBIGUOUS = ["http://127.0.0.1\\.example.com/", "http://example.com\\@127.0.0.1/", "http://127.0.0.%FF/"]


@pytest.mark.parametrize(("url", "host"), SPELLINGS)
def test_hosts_are_read_as_a_whatwg_parser_reads_them(url: str, host: str) -> None:
    assert netguard.parse(url).host == host


@pytest.mark.parametrize("url", LOOPBACK + AMBIGUOUS)
def test_the_media_check_refuses_every_spelling(url: str) -> None:
    assert remote_url_problem(url) is not None


@pytest.mark.parametrize("url", LOOPBACK + AMBIGUOUS)
def test_the_webhook_guard_refuses_every_spelling(url: str) -> None:
    with pytest.raises(netguard.UnsafeURL):
        netguard.validate(url)


def test_a_mapped_public_address_is_still_public() -> None:
    assert remote_url_problem("http://\u2468.\u2462.\u2462.\u2469/a.png") is None
    assert netguard.validate("http://\u2468.\u2462.\u2462.\u2469/").addresses == (netguard._literal("9.3.3.10"),)


def test_international_names_are_compared_in_their_ascii_form() -> None:
    assert netguard.parse("https://B\u00fccher.example/x").host == "xn--bcher-kva.example"
    assert remote_url_problem("https://b\u00fccher.example/a.png") is None
    for bad in ("http://xn--zz.example/", "http://a..b/", "http://\u2603.example/"):
        assert remote_url_problem(bad) is not None, bad


# --- every path that takes a URL -----------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"files_dir": str(tmp_path / "files"), "webhook_allow_loopback": False})


def anthropic_params(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "describe"}, {"type": "image", "source": {"type": "url", "url": url}}]
    return {"max_tokens": 50, "messages": [{"role": "user", "content": content}]}


def openai_params(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"max_tokens": 50, "messages": [{"role": "user", "content": content}]}


A_URL = "params.messages[0].content[1].source.url"
O_URL = "params.messages[0].content[1].image_url.url"
Send = Callable[[TestClient, dict[str, str], str], Response]


def _json(path: str, body: Callable[[str], dict[str, Any]]) -> Send:
    return lambda c, auth, url: c.post(path, json=body(url), headers=auth)


def _line(url: str, fmt: str = "anthropic") -> dict[str, Any]:
    params = anthropic_params(url) if fmt == "anthropic" else openai_params(url)
    return {"custom_id": "r1", "model": M3, "format": fmt, "params": params}


def _jsonl(c: TestClient, auth: dict[str, str], url: str) -> Response:
    body = json.dumps(_line(url, "openai")).encode()
    return c.post("/v1/batches", content=body, headers={**auth, "content-type": "application/x-ndjson"})


def _openai_dropin(c: TestClient, auth: dict[str, str], url: str) -> Response:
    line = {"custom_id": "r1", "method": "POST", "url": ENDPOINT, "body": {"model": M3, **openai_params(url)}}
    up = c.post(
        "/openai/v1/files",
        files={"file": ("in.jsonl", json.dumps(line).encode())},
        data={"purpose": "batch"},
        headers=auth,
    )
    assert up.status_code == 200, up.text
    create = {"input_file_id": up.json()["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
    return c.post("/openai/v1/batches", json=create, headers=auth)


def _schedule(template: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    return lambda url: {"name": "s", "cron": "0 9 * * *", "template": template(url)}


JOB = {"model": "MiniMax-M2.7", "params": {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}}
TEXT_LINE = {"custom_id": "r1", **JOB}

# name -> (send, the field the refusal must name, the error shape)
PATHS: dict[str, tuple[Send, str, str]] = {
    "job-media-anthropic": (_json("/v1/jobs", lambda u: {"model": M3, "params": anthropic_params(u)}), A_URL, "ours"),
    "job-media-openai": (
        _json("/v1/jobs", lambda u: {"model": M3, "format": "openai", "params": openai_params(u)}),
        O_URL,
        "ours",
    ),
    "batch-json-media": (_json("/v1/batches", lambda u: {"requests": [_line(u)]}), f"requests[0].{A_URL}", "ours"),
    "batch-jsonl-media": (_jsonl, f"requests[0].{O_URL}", "ours"),
    "anthropic-dropin-media": (
        _json(
            "/anthropic/v1/messages/batches",
            lambda u: {"requests": [{"custom_id": "r1", "params": {"model": M3, **anthropic_params(u)}}]},
        ),
        f"requests[0].{A_URL}",
        "anthropic",
    ),
    "openai-dropin-media": (_openai_dropin, "body.messages[0].content[1].image_url.url", "openai"),
    "schedule-job-media": (
        _json("/v1/schedules", _schedule(lambda u: {"job": {"model": M3, "params": anthropic_params(u)}})),
        f"template.job.{A_URL}",
        "ours",
    ),
    "schedule-batch-media": (
        _json("/v1/schedules", _schedule(lambda u: {"batch": {"requests": [_line(u)]}})),
        f"template.batch.requests[0].{A_URL}",
        "ours",
    ),
    "job-webhook": (_json("/v1/jobs", lambda u: {**JOB, "webhook_url": u}), "webhook_url", "ours"),
    "batch-json-webhook": (
        _json("/v1/batches", lambda u: {"requests": [TEXT_LINE], "webhook_url": u}),
        "webhook_url",
        "ours",
    ),
    "batch-jsonl-webhook": (
        lambda c, auth, u: c.post(
            "/v1/batches",
            params={"webhook_url": u},
            content=json.dumps(TEXT_LINE),
            headers={**auth, "content-type": "application/x-ndjson"},
        ),
        "webhook_url",
        "ours",
    ),
    "batch-multipart-webhook": (
        lambda c, auth, u: c.post(
            "/v1/batches",
            files={"file": ("in.jsonl", json.dumps(TEXT_LINE).encode())},
            data={"webhook_url": u},
            headers=auth,
        ),
        "webhook_url",
        "ours",
    ),
    "webhook-endpoint": (_json("/v1/webhook-endpoints", lambda u: {"url": u}), "url", "ours"),
    "schedule-job-webhook": (
        _json("/v1/schedules", _schedule(lambda u: {"job": {**JOB, "webhook_url": u}})),
        "template.job.webhook_url",
        "ours",
    ),
    "schedule-batch-webhook": (
        _json("/v1/schedules", _schedule(lambda u: {"batch": {"requests": [TEXT_LINE], "webhook_url": u}})),
        "template.batch.webhook_url",
        "ours",
    ),
}
# Each path with the three spellings of the issue; every spelling on one media and one webhook path.
ISSUE = ["http://127.0.0.\u2460/a.png", "http://127.0.0\u30021/a.png", "http://foo.localhost\u3002/a.png"]
CASES = [
    pytest.param(name, url, id=f"{name}-{i}")
    for name in PATHS
    for i, url in enumerate(LOOPBACK + AMBIGUOUS if name in ("job-media-openai", "webhook-endpoint") else ISSUE)
]


def field_of(r: Response, shape: str) -> str:
    body = r.json()
    if shape == "openai":
        return str(body["error"]["param"])
    if shape == "anthropic":
        return str(body["error"]["message"]).split(" ", 1)[0].removesuffix(":")
    return str(body["error"]["field"])


@pytest.mark.parametrize(("name", "url"), CASES)
def test_every_url_accepting_path_refuses_each_spelling(
    client: TestClient, auth: dict[str, str], name: str, url: str
) -> None:
    send, field, shape = PATHS[name]
    r = send(client, auth, url)
    assert r.status_code in (400, 422), (r.status_code, r.text[:300])
    assert field_of(r, shape) == field, r.text[:300]


def test_a_webhook_endpoint_update_refuses_each_spelling(client: TestClient, auth: dict[str, str]) -> None:
    created = client.post("/v1/webhook-endpoints", json={"url": "http://9.3.3.10/hook"}, headers=auth)
    assert created.status_code == 201, created.text
    for url in ISSUE:
        r = client.patch(f"/v1/webhook-endpoints/{created.json()['id']}", json={"url": url}, headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "url"
