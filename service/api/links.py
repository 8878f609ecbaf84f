"""Links in responses (`links.self`, `results_url`), built without the `Host` header (issue 14.6).

The Host header is the client's to choose (`Host: evil.example` made `"self": "http://evil.example/..."`), so it
never goes into a link. With `MMJOBS_PUBLIC_BASE_URL` set (the URL clients reach the API at, with any path prefix),
links are that base plus the route's path; unset, they are the path alone, relative to wherever the client reached
us. The Anthropic drop-in's `results_url` must be absolute (the SDK joins a relative one under its own base URL,
`/anthropic` twice): unset, it is built from the address the connection arrived on (the socket's, not a header).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _base(request: Request) -> str | None:
    base: str | None = request.app.state.settings.public_base_url
    return base.rstrip("/") if base else None


def link(request: Request, name: str, **params: Any) -> str:
    """The route `name`'s URL: under the public base URL when configured, else its path (with the app's root
    path)."""
    path = str(request.app.url_path_for(name, **params))
    base = _base(request)
    return base + path if base else str(request.scope.get("root_path", "")) + path


def absolute_link(request: Request, name: str, **params: Any) -> str:
    """Like `link`, always absolute: unset, from the local address of the connection (never the Host header)."""
    path = str(request.app.url_path_for(name, **params))
    base = _base(request)
    if base:
        return base + path
    server = request.scope.get("server")
    relative = str(request.scope.get("root_path", "")) + path
    if not server or server[1] is None:  # a Unix socket: no address to name
        return relative
    host, port = str(server[0]), int(server[1])
    scheme = str(request.scope.get("scheme", "http"))
    if ":" in host:
        host = f"[{host}]"
    netloc = host if _DEFAULT_PORTS.get(scheme) == port else f"{host}:{port}"
    return f"{scheme}://{netloc}{relative}"
