"""Document batches: real PDF, DOCX, HTML and text files become one request each, their text placed by the
prompt template; every unreadable, unsupported, empty or too-large file rejects the batch, names the file, and
stores nothing."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from docx import Document
from fastapi.testclient import TestClient
from pypdf import PdfWriter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Batch, Job

URL = "/v1/batches/documents"
FileSpec = tuple[str, tuple[str, bytes]]


def make_pdf(*pages: str) -> bytes:
    """A minimal PDF with one text line per page (Helvetica), xref offsets computed."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for text in pages:
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
            "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>".encode()
        )
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>".encode()
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def blank_pdf() -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=612, height=792)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    doc = Document()
    doc.add_paragraph("Memo: the board approved the merger.")
    table = doc.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "price"
    table.rows[0].cells[1].text = "42"
    out = io.BytesIO()
    doc.save(out)
    return out.getvalue()


HTML = b"""<html><head><title>Page</title><style>body { color: red }</style>
<script>var secret = "do not send";</script></head>
<body><h1>Quarterly results</h1><p>Revenue grew <b>12%</b>.</p><script>track()</script></body></html>"""


def upload(*files: tuple[str, bytes]) -> list[FileSpec]:
    return [("files", (name, data)) for name, data in files]


def post(client: TestClient, auth: dict[str, str], files: list[FileSpec], **fields: Any) -> Any:
    data = {"model": "MiniMax-M2.7", "prompt": "Summarize {filename}:\n\n{document}", **fields}
    return client.post(URL, files=files, data=data, headers=auth)


def jobs_of(session: Session, batch_id: str) -> dict[str, Job]:
    return {j.custom_id or "": j for j in session.scalars(select(Job).where(Job.batch_id == batch_id))}


def counts(session: Session) -> tuple[int, int]:
    return (
        int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        int(session.scalar(select(func.count()).select_from(Job)) or 0),
    )


def test_each_file_becomes_a_request_with_its_text(client: TestClient, auth: dict[str, str], session: Session) -> None:
    files = upload(
        ("notes.txt", "Plain notes, caf\u00e9.".encode()),
        ("readme.md", b"# Title\n\nSome *markdown*."),
        ("page.html", HTML),
        ("report.pdf", make_pdf("First page text", "Second page text")),
        ("memo.docx", make_docx()),
        ("data.json", b'{"a": 1}'),
        ("table.csv", b"name,qty\nbolt,3\n"),
    )
    r = post(
        client,
        auth,
        files,
        params=json.dumps({"max_tokens": 200, "temperature": 0.2}),
        metadata=json.dumps({"run": "docs"}),
        completion_window="2h",
    )
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["id"].startswith("batch_")
    assert batch["request_total"] == 7
    assert batch["metadata"] == {"run": "docs"}
    assert batch["results_url"].endswith(f"/v1/batches/{batch['id']}/results")
    listed = client.get("/v1/jobs", params={"batch_id": batch["id"], "limit": 20}, headers=auth).json()["data"]
    assert sorted(j["custom_id"] for j in listed) == ["data", "memo", "notes", "page", "readme", "report", "table"]
    jobs = jobs_of(session, batch["id"])
    user = {cid: job.params["messages"][0]["content"] for cid, job in jobs.items()}
    assert user["notes"] == "Summarize notes.txt:\n\nPlain notes, caf\u00e9."
    assert "Quarterly results" in user["page"]
    assert "Revenue grew" in user["page"]
    assert "12%" in user["page"]
    assert "secret" not in user["page"]
    assert "color" not in user["page"]
    assert "track()" not in user["page"]
    assert "First page text" in user["report"]
    assert "Second page text" in user["report"]
    assert "board approved the merger" in user["memo"]
    assert "price\t42" in user["memo"]
    assert user["data"].endswith('{"a": 1}')
    assert user["table"].endswith("name,qty\nbolt,3")
    for job in jobs.values():
        assert job.params["max_tokens"] == 200
        assert job.params["temperature"] == 0.2
        assert job.params["messages"][0]["role"] == "user"
        assert "system" not in job.params
        assert job.format == "anthropic"
        assert job.max_tokens == 200
        assert job.estimated_input_tokens > 0


def test_custom_ids_are_sanitized_and_deduplicated(client: TestClient, auth: dict[str, str], session: Session) -> None:
    long_name = "x" * 100 + ".txt"
    files = upload(
        ("Q3 report (final).txt", b"a"),
        ("a.txt", b"b"),
        ("a.md", b"c"),
        ("dir/a.txt", b"d"),
        ("r\u00e9sum\u00e9.txt", b"e"),
        ("\u6587\u6863.txt", b"f"),
        (long_name, b"g"),
        (long_name, b"h"),
        ("a-2.txt", b"i"),
    )
    r = post(client, auth, files, prompt="{document}")
    assert r.status_code == 202, r.text
    jobs = jobs_of(session, r.json()["id"])
    by_text = {job.params["messages"][0]["content"]: cid for cid, job in jobs.items()}
    assert by_text == {
        "a": "Q3_report_final",
        "b": "a",
        "c": "a-2",
        "d": "a-3",
        "e": "resume",
        "f": "document",
        "g": "x" * 64,
        "h": "x" * 62 + "-2",
        "i": "a-2-2",
    }


def test_prompt_without_document_is_the_system_prompt(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    r = post(client, auth, upload(("brief.txt", b"The text.")), prompt="You summarize {filename}.", system="Be brief.")
    assert r.status_code == 202, r.text
    (job,) = jobs_of(session, r.json()["id"]).values()
    assert job.params["system"] == "Be brief.\n\nYou summarize brief.txt."
    assert job.params["messages"] == [{"role": "user", "content": "The text."}]


def test_placeholders_fill_once_and_document_braces_stay(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    files = upload(("t.txt", b"keep {filename} and {document} and {x}"))
    r = post(client, auth, files, prompt="[{filename}] {document} [{filename}]", system="Sys {filename}")
    assert r.status_code == 202, r.text
    (job,) = jobs_of(session, r.json()["id"]).values()
    assert job.params["messages"][0]["content"] == "[t.txt] keep {filename} and {document} and {x} [t.txt]"
    assert job.params["system"] == "Sys {filename}"


def test_openai_format_builds_chat_completions_bodies(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    files = upload(("a.txt", b"alpha"), ("b.txt", b"beta"))
    r = post(client, auth, files, format="openai", system="Answer in French.", params='{"max_completion_tokens": 50}')
    assert r.status_code == 202, r.text
    jobs = jobs_of(session, r.json()["id"])
    assert jobs["a"].format == "openai"
    assert jobs["a"].params == {
        "max_completion_tokens": 50,
        "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "Summarize a.txt:\n\nalpha"},
        ],
    }
    r = post(client, auth, upload(("c.txt", b"gamma")), format="openai", prompt="Summarize {filename}.")
    (job,) = jobs_of(session, r.json()["id"]).values()
    assert job.params["messages"] == [
        {"role": "system", "content": "Summarize c.txt."},
        {"role": "user", "content": "gamma"},
    ]


def test_a_document_too_large_for_m2_fits_m3(client: TestClient, auth: dict[str, str], session: Session) -> None:
    big = ("word " * 180_000).encode()  # 900,000 bytes: ~225,000 tokens, over M2.x's 204,800
    before = counts(session)
    r = post(client, auth, upload(("ok.txt", b"fine"), ("big.txt", big)))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "context_window_exceeded"
    assert error["field"] == "files[1]"
    assert '"big.txt"' in error["message"]
    assert "225,000" in error["message"]
    assert "204,800" in error["message"]
    assert "MiniMax-M3" in error["message"]
    assert counts(session) == before
    r = post(client, auth, upload(("big.txt", big)), model="MiniMax-M3")
    assert r.status_code == 202, r.text


def test_too_large_by_estimate_gives_the_exact_figure(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    cjk = ("\u6587" * 205_000).encode()  # 615 KB, one token per character: over the window by the estimate only
    before = counts(session)
    r = post(client, auth, upload(("long.md", cjk)), params='{"max_tokens": 100}')
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "files[0]"
    assert error["type"] == "context_window_exceeded"
    assert '"long.md"' in error["message"]
    assert "estimated 205,0" in error["message"]
    assert "max_tokens 100" in error["message"]
    assert "204,800" in error["message"]
    assert counts(session) == before


@pytest.mark.parametrize(
    ("name", "data", "needle"),
    [
        ("tool.exe", b"MZ", "'.exe' files are not supported"),
        ("README", b"text", "without an extension"),
        ("latin1.txt", "caf\u00e9".encode("latin-1"), "not valid UTF-8 (byte 0xe9 at offset 3)"),
        ("broken.pdf", b"%PDF-1.4 not really", "cannot be read as PDF"),
        ("broken.docx", b"PK\x03\x04 not a zip", "cannot be read as DOCX"),
        ("blank.txt", b"  \n\t\n", "holds no text"),
        ("scripts.html", b"<script>only()</script><style>p{}</style>", "holds no text"),
        ("scan.pdf", blank_pdf(), "OCR"),
    ],
)
def test_a_bad_file_names_itself_and_stores_nothing(
    client: TestClient, auth: dict[str, str], session: Session, name: str, data: bytes, needle: str
) -> None:
    before = counts(session)
    r = post(client, auth, upload(("good.txt", b"fine"), ("good2.md", b"fine"), (name, data)))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "files[2]"
    assert f'files[2] ("{name}")' in error["message"]
    assert needle in error["message"]
    assert counts(session) == before


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        ({"model": "MiniMax-X"}, "model", "unknown model"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"params": "{not json"}, "params", "JSON"),
        ({"params": "[1]"}, "params", "dictionary"),
        ({"params": '{"temperature": 3}'}, "params.temperature", "outside"),
        ({"params": '{"max_tokens": 204800}'}, "params.max_tokens", "leaves no room for the documents"),
        ({"params": '{"messages": []}'}, "params.messages", "built from"),
        ({"params": '{"system": "x"}'}, "params.system", "`system` field"),
        ({"format": "gemini"}, "format", "anthropic"),
        ({"metadata": "nope"}, "metadata", "JSON object"),
        ({"completion_window": "soon"}, "completion_window", "pattern"),
        ({"temperature": "0.5"}, "temperature", "Extra inputs"),
    ],
)
def test_bad_shared_fields_name_the_field(
    client: TestClient, auth: dict[str, str], session: Session, fields: dict[str, str], field: str, needle: str
) -> None:
    before = counts(session)
    r = post(client, auth, upload(("a.txt", b"fine")), **fields)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert needle in r.json()["error"]["message"]
    assert counts(session) == before


def test_the_form_itself_must_be_right(client: TestClient, auth: dict[str, str], session: Session) -> None:
    before = counts(session)
    r = client.post(URL, data={"model": "MiniMax-M2.7", "prompt": "{document}"}, headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "files"
    r = client.post(URL, files=[("file", ("a.txt", b"x"))], data={"model": "MiniMax-M2.7", "prompt": "p"}, headers=auth)
    assert r.json()["error"]["field"] == "file"
    assert "only `files`" in r.json()["error"]["message"]
    r = client.post(URL, json={"model": "MiniMax-M2.7"}, headers=auth)
    assert r.status_code == 415
    assert client.post(URL, files=upload(("a.txt", b"x")), data={"model": "m", "prompt": "p"}).status_code == 401
    assert counts(session) == before


def test_openapi_describes_the_multipart_body(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"][URL]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["files"]["items"]["format"] == "binary"
    assert {"files", "model", "prompt"} <= set(schema["required"])
    assert {"system", "params", "format", "metadata", "webhook_url", "completion_window"} <= set(schema["properties"])
    assert "{document}" in operation["description"]
    assert "{filename}" in operation["description"]
