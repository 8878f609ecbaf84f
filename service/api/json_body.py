"""JSON request bodies parsed under `service.validation`'s rules, for every route FastAPI parses a body for.

FastAPI reads a JSON body with `request.json()` (plain `json.loads`) and turns any error but a syntax error into
a bare 400 without a field. `JSONRoute` parses the body first with `validation.loads`, so NaN, huge integers,
lone surrogates and deep nesting are refused naming the field, and hands FastAPI the parsed value (Starlette
keeps it in `Request._json`, which `request.json()` returns when set: the pattern FastAPI's docs use for a custom
request body). Routers take it with `APIRouter(route_class=JSONRoute)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from email.message import Message
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from service import validation


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


class JSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # no body to parse (GET, DELETE, and routes that read the stream themselves)

        async def parse_first(request: Request) -> Response:
            if _is_json(request) and request.method not in ("GET", "HEAD"):
                body = await request.body()
                if body:
                    try:
                        request._json = validation.loads(body)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        pass  # FastAPI parses it again and answers its own "JSON decode error" (422 json_invalid)
            return await handler(request)

        return parse_first
