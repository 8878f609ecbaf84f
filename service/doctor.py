"""`mmjobs doctor`: one tiny call per wire format against the configured MiniMax upstream.

Each check sends a one-token request (`max_tokens: 1`, a few input tokens: a fraction of a cent) and reads the
answer the way MiniMax documents it (reference/minimax-api.md, "Errors"): the HTTP status, the code in brackets at
the end of the message or in `base_resp`. It prints one line per check, and on failure the fix: which setting is
wrong (MINIMAX_API_KEY, MINIMAX_BASE_URL, the model) and what to set instead. The service never imports worker
code, so this talks HTTP itself rather than through the workers' adapters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
import typer

from service.minimax_url import normalize_base_url

DEFAULT_MODEL = "MiniMax-M2.7"
_CODE = re.compile(r"[(\[]\s*(\d{4})\s*[)\]][\s.]*$")
_KEY_CODES = frozenset({1004, 2049})
_BALANCE_CODES = frozenset({1008})
_LIMIT_CODES = frozenset({1002, 1039, 1041, 2045, 2056})
Status = Literal["ok", "fail", "warn"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Verdict:
    check: str
    status: Status
    summary: str
    fix: str | None = None

    def line(self) -> str:
        mark = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL"}[self.status]
        text = f"{mark} {self.check}: {self.summary}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


def _probe_body(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}


def _code(payload: Any) -> tuple[int | None, str]:
    """MiniMax's code and message from an answer body of either format (or a `base_resp` inside a 200)."""
    if not isinstance(payload, Mapping):
        return None, ""
    message = ""
    error = payload.get("error")
    if isinstance(error, Mapping):
        message = str(error.get("message") or error.get("type") or "")
    base = payload.get("base_resp")
    code: int | None = None
    if isinstance(base, Mapping):
        raw = base.get("status_code")
        if isinstance(raw, int) and not isinstance(raw, bool) and raw:
            code = raw
            message = message or str(base.get("status_msg") or "")
    if code is None and (match := _CODE.search(message)):
        code = int(match.group(1))
    return code, message


def check_format(
    *, client: httpx.Client, fmt: Literal["anthropic", "openai"], base_url: str, api_key: str, model: str
) -> Verdict:
    """One call in one format, read into a verdict naming what to fix."""
    root = normalize_base_url(base_url)
    path = "/anthropic/v1/messages" if fmt == "anthropic" else "/v1/chat/completions"
    url = root + path
    check = f"{fmt} format ({url}, {model})"
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    if fmt == "anthropic":
        headers["anthropic-version"] = "2023-06-01"
    try:
        response = client.post(url, json=_probe_body(model), headers=headers)
    except httpx.RequestError as exc:
        return Verdict(
            check=check,
            status="fail",
            summary=f"cannot reach the upstream ({type(exc).__name__}: {exc})",
            fix=f"check MINIMAX_BASE_URL (now {root}); MiniMax's is https://api.minimax.io "
            "(https://api.minimaxi.com for mainland-China accounts), and that this host can reach it",
        )
    try:
        payload: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        payload = None
    code, message = _code(payload)
    status = response.status_code
    said = f"HTTP {status}" + (f", code {code}" if code else "") + (f": {message[:160]}" if message else "")
    if status == 404 or (status >= 400 and payload is None and status != 401):
        return Verdict(
            check=check,
            status="fail",
            summary=f"the base URL is wrong, {url} does not exist ({said})",
            fix=f"set MINIMAX_BASE_URL to https://api.minimax.io (or https://api.minimaxi.com in China); now {root}",
        )
    if (status in (401, 403) and code not in (2038,)) or code in _KEY_CODES:
        return Verdict(
            check=check,
            status="fail",
            summary=f"the API key was refused ({said})",
            fix="set MINIMAX_API_KEY to a key from platform.minimax.io (keys from platform.minimaxi.com work only "
            "with MINIMAX_BASE_URL=https://api.minimaxi.com, and the other way round)",
        )
    if code in _BALANCE_CODES:
        return Verdict(
            check=check, status="fail", summary=f"the account has no balance ({said})", fix="top up the MiniMax account"
        )
    if code == 2038:
        return Verdict(
            check=check,
            status="fail",
            summary=f"the account needs real-name verification ({said})",
            fix="complete verification on the MiniMax platform",
        )
    if status == 429 or code in _LIMIT_CODES:
        return Verdict(
            check=check,
            status="warn",
            summary=f"key and base URL work, but a limit was hit ({said})",
            fix="wait, or lower MMJOBS_RATE_LIMITS for this model",
        )
    if status == 400 and "model" in message.lower():
        return Verdict(
            check=check,
            status="fail",
            summary=f"model {model} is not available to this key in this format ({said})",
            fix="pick a model the account can use (`mmjobs doctor --model MiniMax-M2.7`)",
        )
    if status >= 400 or code:
        return Verdict(check=check, status="fail", summary=f"the upstream refused the call ({said})", fix=None)
    if not isinstance(payload, Mapping) or not (payload.get("content") or payload.get("choices")):
        shown = json.dumps(payload)[:160] if payload is not None else response.text[:160]
        return Verdict(
            check=check,
            status="fail",
            summary=f"HTTP {status} but not a MiniMax answer: {shown}",
            fix=f"MINIMAX_BASE_URL ({root}) points at something else; use https://api.minimax.io",
        )
    return Verdict(check=check, status="ok", summary=f"key, base URL and model work (HTTP {status})")


def run_checks(
    *, base_url: str, api_key: str | None, model: str = DEFAULT_MODEL, timeout: float = 30.0
) -> list[Verdict]:
    """The key check, then one call per format."""
    if not api_key:
        return [
            Verdict(
                check="MINIMAX_API_KEY",
                status="fail",
                summary="no key is configured (the service would run against its simulator)",
                fix="export MINIMAX_API_KEY=<a key from platform.minimax.io>",
            )
        ]
    verdicts = [Verdict(check="MINIMAX_BASE_URL", status="ok", summary=f"calls go to {normalize_base_url(base_url)}")]
    with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as client:
        for fmt in ("anthropic", "openai"):
            verdicts.append(check_format(client=client, fmt=fmt, base_url=base_url, api_key=api_key, model=model))
    return verdicts


def doctor(
    model: Annotated[str, typer.Option(help="The model to try in both formats.")] = DEFAULT_MODEL,
) -> None:
    """Check the MiniMax key, base URL and model access with one tiny call per format."""
    from service.config import get_settings

    settings = get_settings()
    verdicts = run_checks(base_url=settings.minimax_base_url, api_key=settings.minimax_api_key, model=model)
    for verdict in verdicts:
        typer.echo(verdict.line())
    if any(v.status == "fail" for v in verdicts):
        raise typer.Exit(1)
