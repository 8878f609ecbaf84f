"""`mmjobs video analyze FILE_OR_URL --prompt ...`: one MiniMax-M3 job about a video (or an image), through the
REST API: a local file is uploaded to `POST /v1/files` first (with a progress bar), then the job is submitted and
followed (status and output tokens so far) until it ends; its text goes to stdout, everything else to stderr.
"""

from __future__ import annotations

import secrets
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.text import Text

from service.cli.batch import DEFAULT_URL, Api, ApiKey, ApiUrl, Format, err, fail, out, read
from service.media import formats
from service.media.parts import MM_FILE, MMJOBS_FILE

video_app = typer.Typer(help="Analyze videos and images with MiniMax-M3.", no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "canceled", "expired")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


class Detail(StrEnum):
    low = "low"
    default = "default"
    high = "high"


def _upload(api: Api, path: Path) -> tuple[str, formats.Kind]:
    """Upload a local file to /v1/files with a progress bar; its `mmjobs_file://` reference and kind."""
    with path.open("rb") as f:
        found = formats.sniff(f.read(formats.HEAD_BYTES))
    if found is None:
        raise fail(f"{path}: not a video (MP4, MOV, AVI, MKV) or an image (JPEG, PNG, GIF, WEBP) by its content")
    purpose = "video_understanding" if found.kind == "video" else "image"
    boundary = secrets.token_hex(16)
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name.replace(chr(34), "")}"\r\n'
        f"Content-Type: {found.media_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = path.stat().st_size
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(TextColumn("uploading"), *columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("upload", total=size)

        def body() -> Any:
            yield head
            yield from read(path, lambda n: bar.advance(task, n))
            yield tail

        headers = {
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(len(head) + size + len(tail)),
        }
        file = api.call("POST", "/v1/files", content=body(), headers=headers)
    err.print(f"uploaded {file['id']} ({file['bytes']:,} bytes, {file['media_type']})", highlight=False)
    return str(file["reference"]), found.kind


def _reference(api: Api, target: str) -> tuple[str, formats.Kind]:
    if target.startswith(("http://", "https://", MM_FILE, MMJOBS_FILE)):
        path_part = target.split("?", 1)[0].lower()
        return target, "image" if path_part.endswith(_IMAGE_SUFFIXES) else "video"
    path = Path(target)
    if not path.is_file():
        raise fail(f"no such file: {target} (give a local file, an http(s) URL, mm_file://ID or mmjobs_file://ID)")
    return _upload(api, path)


def build_params(
    reference: str, kind: formats.Kind, *, prompt: str, fmt: Format, fps: float | None, detail: Detail | None,
    max_tokens: int,
) -> dict[str, Any]:  # fmt: skip
    """The job's params: the media part (with its options) then the prompt, in the chosen wire format."""
    options: dict[str, Any] = {}
    if fps is not None and kind == "video":
        options["fps"] = fps
    if detail is not None:
        options["detail"] = detail.value
    if fmt is Format.anthropic:
        part: dict[str, Any] = {"type": kind, "source": {"type": "url", "url": reference, **options}}
    else:
        part = {"type": f"{kind}_url", f"{kind}_url": {"url": reference, **options}}
    content = [part, {"type": "text", "text": prompt}]
    return {"max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}


def _line(job: dict[str, Any], started: float) -> Text:
    tokens = job.get("progress", {}).get("output_tokens_so_far", 0)
    return Text.assemble(
        (f"{job['id']}  ", "dim"),
        (job["status"], "bold cyan"),
        f"  {tokens:,} output tokens so far  {time.monotonic() - started:.0f}s",
    )


def _follow(api: Api, job_id: str, interval: float) -> dict[str, Any]:
    started = time.monotonic()
    job: dict[str, Any] = api.call("GET", f"/v1/jobs/{job_id}")
    shown = job["status"]
    with Live(_line(job, started), console=err, transient=True, auto_refresh=err.is_terminal) as live:
        while job["status"] not in TERMINAL:
            time.sleep(interval)
            job = api.call("GET", f"/v1/jobs/{job_id}")
            if err.is_terminal:
                live.update(_line(job, started))
            elif job["status"] != shown:  # not a terminal: one line per change of status
                shown = job["status"]
                err.print(_line(job, started))
    return job


@video_app.command()
def analyze(
    target: Annotated[
        str, typer.Argument(metavar="FILE_OR_URL", help="A local video or image, a URL, or mm_file://ID.")
    ],
    prompt: Annotated[str, typer.Option(help="What to ask about it.")],
    model: Annotated[str, typer.Option(help="A model that reads video.")] = "MiniMax-M3",
    fps: Annotated[float | None, typer.Option(help="Frames per second MiniMax samples (0.2-5; default 1).")] = None,
    detail: Annotated[Detail | None, typer.Option(help="Resolution MiniMax reads frames at.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Longest answer.")] = 4096,
    format: Annotated[Format, typer.Option(help="The request body shape.")] = Format.anthropic,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends and print its answer.")] = True,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 1.0,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = None,
) -> None:
    """Ask MiniMax-M3 about a video or an image. Prints the job id, then (with --wait) its answer."""
    api = Api(api_url, api_key, read_timeout=600)
    reference, kind = _reference(api, target)
    params = build_params(reference, kind, prompt=prompt, fmt=format, fps=fps, detail=detail, max_tokens=max_tokens)
    job = api.call("POST", "/v1/jobs", json={"model": model, "format": format.value, "params": params})
    err.print(f"submitted {job['id']}", highlight=False)
    if not wait:
        out.print(job["id"], highlight=False, markup=False)
        return
    job = _follow(api, job["id"], interval)
    usage = job["usage"]
    summary = f"{job['id']} {job['status']}: {usage['input_tokens']:,} input + {usage['output_tokens']:,} output tokens"
    err.print(f"{summary}, ${float(usage['cost_usd']):.6f}", highlight=False, markup=False)
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise fail(f"{error.get('type', job['status'])}: {error.get('message', '')}")
    out.print((job.get("result") or {}).get("text", ""), highlight=False, markup=False)
