"""`mmjobs batch ...`: submit documents or a JSONL file as a batch and follow it, through the REST API.

A client of the API, not of the database: it needs only the API's URL and a key (`--api-url`, `--api-key`, or
MMJOBS_API_URL / MMJOBS_API_KEY). Human messages go to stderr, the batch id and data to stdout, so
`ID=$(mmjobs batch submit ...)` works.
"""

from __future__ import annotations

import json
import mimetypes
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

batch_app = typer.Typer(help="Submit batches of documents or JSONL requests and follow them.", no_args_is_help=True)
out = Console()
err = Console(stderr=True, soft_wrap=True)

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help="The minimax-jobs API. Default: MMJOBS_API_URL, else the API a `mmjobs up` in this directory runs, "
        "else http://127.0.0.1:8000.",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        help="An API key. Default: MMJOBS_API_KEY, else the development key of a `mmjobs up` in this directory.",
        show_default=False,
    ),
]
DEFAULT_URL: str | None = None
FALLBACK_URL = "http://127.0.0.1:8000"
COUNTS = ("processing", "succeeded", "errored", "canceled", "expired")
_COLORS = {"processing": "cyan", "succeeded": "green", "errored": "red", "canceled": "yellow", "expired": "magenta"}
CHUNK = 64 * 1024


class Format(StrEnum):
    anthropic = "anthropic"
    openai = "openai"


def fail(message: str) -> typer.Exit:
    # A Text, not markup: messages hold brackets (`files[2]`) that Rich would read as tags.
    err.print(Text.assemble(("error: ", "bold red"), message))
    return typer.Exit(1)


def json_problem(path: Path, exc: json.JSONDecodeError, line: int | None = None) -> str:
    """Where a user's JSON (or a JSONL line) is broken: "FILE, line L, column C: not valid JSON (why)"."""
    return f"{path}, line {line or exc.lineno}, column {exc.colno}: not valid JSON ({exc.msg})"


def whole_ids(table: Table, *names: str) -> Table:
    """Ids are never shortened (they are what the next command takes): their columns keep their full width and
    never wrap; every other column folds onto more lines to fit the terminal, so no value is cut either."""
    for column in table.columns:
        if column.header in names:
            column.no_wrap = True
            column.min_width = max((len(str(cell)) for cell in column.cells), default=0)
        else:
            column.overflow = "fold"
    return table


def target(url: str | None, key: str | None) -> tuple[str, str]:
    """The API and key to use: as given (options), else MMJOBS_API_URL / MMJOBS_API_KEY, else the API and development
    key of a `mmjobs up` in this directory (it records them under .mmjobs/), else http://127.0.0.1:8000."""
    from service.config import Settings

    settings = Settings()  # not the cached one: read now, as a command runs
    local = settings.local_up() or {}
    local_url = local.get("api_url") if isinstance(local.get("api_url"), str) else None
    url = url or settings.api_url or local_url or FALLBACK_URL
    key = key or settings.api_key
    if not key and local_url and url.rstrip("/") == local_url.rstrip("/"):
        key = settings.dev_api_key()  # that API's own development key
    if not key:
        raise fail(
            f"no API key: pass --api-key or set MMJOBS_API_KEY for {url} (a `mmjobs up` run in this directory is "
            "found with its development key by itself; or `mmjobs keys create --tenant NAME`)"
        )
    return url, key


class Api:
    """The REST API over httpx; every failure becomes one line that says what to do, and exit code 1."""

    def __init__(
        self,
        url: str | None,
        key: str | None,
        *,
        read_timeout: float = 60,
        not_found_hint: str = "see `mmjobs batch list`",
    ) -> None:
        url, key = target(url, key)
        self.url = url.rstrip("/")
        self.not_found_hint = not_found_hint
        self.client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(10, read=read_timeout, write=60),
        )

    @contextmanager
    def _transport(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise fail(
                f"cannot reach the API at {self.url}: is `mmjobs up` (or `mmjobs api`) running? "
                "Point elsewhere with --api-url or MMJOBS_API_URL"
            ) from None
        except httpx.TimeoutException:
            raise fail(f"the API at {self.url} did not answer in time; try again") from None
        except httpx.TransportError as exc:
            raise fail(f"lost the connection to the API at {self.url}: {exc}") from None

    def _check(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        response.read()
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = f"the API answered {response.status_code}: {response.text[:200]}"
        if response.status_code == 401:
            message += " (pass a valid key with --api-key or MMJOBS_API_KEY)"
        elif response.status_code == 404:
            message += f" ({self.not_found_hint})"
        raise fail(message)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request and return its JSON body."""
        with self._transport():
            response = self.client.request(method, path, **kwargs)
        self._check(response)
        return response.json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[Iterator[bytes]]:
        """The response body in chunks, as it arrives."""
        with self._transport(), self.client.stream(method, path, **kwargs) as response:
            self._check(response)
            yield response.iter_bytes()


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def read(path: Path, advance: Callable[[int], None]) -> Iterator[bytes]:
    """A file in 64 KB chunks, each reported to `advance` as it is sent."""
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            advance(len(chunk))
            yield chunk


def multipart(
    fields: list[tuple[str, str]], files: list[Path], advance: Callable[[int], None]
) -> tuple[str, int, Iterator[bytes]]:
    """A multipart/form-data body streamed from disk: (content type, exact length, chunks). Each file is opened
    only when its turn comes and read in 64 KB chunks, each reported to `advance`."""
    boundary = secrets.token_hex(16)
    heads = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(n)}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
        for n, v in fields
    ]
    file_heads = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{_quote(p.name)}"\r\n'
            f"Content-Type: {mimetypes.guess_type(p.name)[0] or 'application/octet-stream'}\r\n\r\n"
        ).encode()
        for p in files
    ]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(map(len, heads)) + sum(len(h) + p.stat().st_size + 2 for h, p in zip(file_heads, files, strict=True))

    def chunks() -> Iterator[bytes]:
        yield from heads
        for head, path in zip(file_heads, files, strict=True):
            yield head
            yield from read(path, advance)
            yield b"\r\n"
        yield tail

    return f"multipart/form-data; boundary={boundary}", length + len(tail), chunks()


def _pairs(values: list[str] | None, option: str, parse_json: bool) -> dict[str, Any]:
    """KEY=VALUE options; with parse_json a value that is JSON (1024, 0.2, true, [..]) is taken as such."""
    pairs: dict[str, Any] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"{option} {item!r}: write KEY=VALUE, e.g. {option} max_tokens=1024")
        pairs[key] = value
        if parse_json:
            try:
                pairs[key] = json.loads(value)
            except json.JSONDecodeError:
                pass
    return pairs


DOCUMENT_SUFFIXES = (".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".json", ".csv")


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for its documents (by suffix, in name order, hidden files left out)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DOCUMENT_SUFFIXES
            )  # fmt: skip
            if not found:
                raise fail(f"no documents in {path} (looked for {' '.join(DOCUMENT_SUFFIXES)})")
            err.print(f"{path}: {len(found)} documents", highlight=False)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise fail(f"no such file or directory: {path}")
    return files


@batch_app.command()
def submit(
    files: Annotated[
        list[Path],
        typer.Argument(help="Documents (.txt .md .html .pdf .docx .json .csv), directories of them, or one .jsonl."),
    ],
    prompt: Annotated[
        str | None,
        typer.Option(help="Template with {document} and/or {filename}; without {document} it is the system prompt."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="e.g. MiniMax-M2.7.")] = None,
    param: Annotated[list[str] | None, typer.Option(help="KEY=VALUE added to every request's params.")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    format: Annotated[Format, typer.Option(help="The request body shape.")] = Format.anthropic,
    metadata: Annotated[list[str] | None, typer.Option(help="KEY=VALUE on the batch (repeatable).")] = None,
    completion_window: Annotated[str | None, typer.Option(help="e.g. 24h, 90m.")] = None,
    wait: Annotated[bool, typer.Option(help="Watch the batch until it ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --wait.")] = 2.0,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Upload documents as a batch (one request per file; a directory gives its documents), or send a JSONL file of
    requests. Prints the batch id."""
    files = _expand(files)
    jsonl = [p for p in files if p.suffix.lower() == ".jsonl"]
    options: dict[str, str] = {}
    if metadata:
        options["metadata"] = json.dumps(_pairs(metadata, "--metadata", parse_json=False))
    if completion_window:
        options["completion_window"] = completion_window
    if jsonl and len(files) > 1:
        raise fail("give one .jsonl file of requests, or documents, not both")
    if jsonl and (prompt or model or param or system):
        raise fail("--prompt, --model, --param and --system are for documents; a .jsonl carries its own requests")
    if not jsonl and (not prompt or not model):
        raise fail("documents need --prompt (with {document} and/or {filename}) and --model, e.g. MiniMax-M2.7")
    fields = [("model", model or ""), ("prompt", prompt or ""), ("format", format.value), *options.items()]
    fields += [("system", system)] if system else []
    fields += [("params", json.dumps(_pairs(param, "--param", parse_json=True)))] if param else []
    api = Api(api_url, api_key, read_timeout=600)
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(
        TextColumn("uploading"), *columns, console=err, transient=True, disable=not err.is_terminal
    ) as progress:
        task = progress.add_task("upload", total=sum(p.stat().st_size for p in files))

        def advance(n: int) -> None:
            progress.advance(task, n)

        if jsonl:
            endpoint, params = "/v1/batches", options
            content_type, length, body = "application/x-ndjson", files[0].stat().st_size, read(files[0], advance)
        else:
            endpoint, params = "/v1/batches/documents", {}
            content_type, length, body = multipart(fields, files, advance)
        headers = {"content-type": content_type, "content-length": str(length)}
        batch = api.call("POST", endpoint, params=params, content=body, headers=headers)
    err.print(f"submitted {batch['id']}: {batch['request_total']} requests", highlight=False)
    out.print(batch["id"], highlight=False, markup=False)
    if wait:
        _watch(api, batch["id"], interval)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _eta(batch: dict[str, Any]) -> str:
    at = _when(batch.get("estimated_completion_at"))
    if batch["processing_status"] == "ended" or at is None:
        return "" if batch["processing_status"] == "ended" else "ETA: estimating"
    left = max(int((at - datetime.now(UTC)).total_seconds()), 0)
    minutes, seconds = divmod(left, 60)
    hours, minutes = divmod(minutes, 60)
    span = f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"
    return f"ETA {at.astimezone():%H:%M:%S} (in {span})"


def _counts_line(batch: dict[str, Any]) -> Text:
    text = Text(f"{batch['id']}  {batch['processing_status']}  ")
    for name in COUNTS:
        text.append(f"{name} {batch['request_counts'][name]}  ", style=_COLORS[name])
    return text


def _watch(api: Api, batch_id: str, interval: float) -> dict[str, Any]:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[eta]}")
    )
    task = progress.add_task("done", total=None, eta="")
    try:
        with Live(console=out, auto_refresh=False) as live:
            while True:
                batch: dict[str, Any] = api.call("GET", f"/v1/batches/{batch_id}")
                total = batch["request_total"]
                done = total - batch["request_counts"]["processing"]
                progress.update(task, total=total, completed=done, eta=_eta(batch))
                live.update(Group(_counts_line(batch), progress), refresh=True)
                if batch["processing_status"] == "ended":
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        err.print(f"stopped watching; {batch_id} keeps running (`mmjobs batch watch {batch_id}` to resume)")
        raise typer.Exit(130) from None
    err.print(f"ended: get the results with `mmjobs batch results {batch_id} -o {batch_id}.jsonl`", highlight=False)
    return batch


@batch_app.command()
def watch(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 2.0,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Live counts, a progress bar and the ETA until the batch ends (Ctrl-C stops watching, not the batch)."""
    _watch(Api(api_url, api_key), batch_id, interval)


@batch_app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write; - for stdout.")] = None,
    status: Annotated[
        list[str] | None, typer.Option(help="Only these result types: succeeded, errored, canceled, expired.")
    ] = None,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Download the results (JSONL, one line per finished request), streamed to the file."""
    api = Api(api_url, api_key, read_timeout=300)
    target = output or Path(f"{batch_id}.jsonl")
    to_stdout = str(target) == "-"
    # Written beside the target and moved into place: an interrupted download leaves no half-written target.
    partial = target.with_name(target.name + ".part")
    lines = 0
    with (
        api.stream("GET", f"/v1/batches/{batch_id}/results", params={"status": status or []}) as chunks,
        nullcontext(sys.stdout.buffer) if to_stdout else partial.open("wb") as sink,
    ):
        for chunk in chunks:
            lines += chunk.count(b"\n")
            sink.write(chunk)
    if not to_stdout:
        partial.replace(target)
    err.print(f"{lines} lines" + ("" if to_stdout else f" written to {target}"), highlight=False)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@batch_app.command()
def get(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON, as is.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Show a batch: status, counts, usage and ETA."""
    batch = Api(api_url, api_key).call("GET", f"/v1/batches/{batch_id}")
    if as_json:
        _json(batch)
        return
    usage, created = batch["usage"], datetime.fromisoformat(batch["created_at"])
    out.print(_counts_line(batch), soft_wrap=True)
    out.print(
        f"created {created.astimezone():%Y-%m-%d %H:%M}   tokens {usage['input_tokens']:,} in, "
        f"{usage['output_tokens']:,} out   {_eta(batch)}\nresults {batch['results_url']}",
        highlight=False,
        soft_wrap=True,
    )


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option(help="Batches per page (1-200).")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The next page, as the previous one printed.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON, as is.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """List your batches, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    page = Api(api_url, api_key).call("GET", "/v1/batches", params=params)
    if as_json:
        _json(page)
        return
    for b in page["data"]:
        created = datetime.fromisoformat(b["created_at"])
        line = _counts_line(b).append(f"created {created.astimezone():%Y-%m-%d %H:%M}")
        out.print(line, soft_wrap=True)
    if page["has_more"]:
        err.print(f"more: mmjobs batch list --cursor {page['next_cursor']}", highlight=False)


@batch_app.command()
def cancel(
    batch_id: Annotated[str, typer.Argument(help="The batch id.")],
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Cancel a batch: queued requests at once; running ones finish."""
    batch = Api(api_url, api_key).call("POST", f"/v1/batches/{batch_id}/cancel")
    out.print(_counts_line(batch), soft_wrap=True)
    if batch["processing_status"] == "canceling":
        err.print(f"{batch['request_counts']['processing']} running requests will finish first")
