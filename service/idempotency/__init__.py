"""Idempotent POSTs: the `Idempotency-Key` header (see middleware.py), installed on the app with `install`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response

from service.idempotency.middleware import HEADER, MAX_KEY_LENGTH, REPLAYED, IdempotencyMiddleware

__all__ = ["HEADER", "REPLAYED", "IdempotencyMiddleware", "install", "shows_secret"]

_PARAMETER: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
    "description": "Makes the request safe to retry: the first response to a key (status and body) is kept for 24 "
    f"hours per tenant and replayed with `{REPLAYED}: true`. The same key with a different request answers 422 "
    "(`idempotency_key_reused`); while the first request is still running, 409 (`idempotency_key_in_use`). "
    "Responses that ask for a retry (5xx, 402, 408, 409, 425, 429) are not kept. A response that shows a secret "
    "(webhook signing secrets) is never kept: the request runs once, and a replay answers 409 "
    "(`idempotency_key_unreplayable`) without running it again or showing the secret a second time.",
}
_IN_USE = {"description": "Conflict; with an Idempotency-Key: the first request with this key is still running."}
_REPLAY_HEADER = {"description": "`true` when this is the stored response to an earlier request with the same "
                  "Idempotency-Key.", "schema": {"type": "string", "enum": ["true"]}}  # fmt: skip


def shows_secret(response: Response) -> None:
    """Route dependency for a response that shows a secret: `Cache-Control: no-store`, so neither an HTTP cache
    nor the idempotency middleware keeps it (the middleware keeps only that the request ran)."""
    response.headers["Cache-Control"] = "no-store"


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the header, the 409 and the replay header to every POST operation of an OpenAPI schema."""
    for operations in schema.get("paths", {}).values():
        post = operations.get("post")
        if post is None:
            continue
        parameters = post.setdefault("parameters", [])
        if not any(p.get("name") == HEADER for p in parameters):
            parameters.append(dict(_PARAMETER))
        responses = post.setdefault("responses", {})
        responses.setdefault("409", dict(_IN_USE))
        for code, response in responses.items():
            if code.startswith("2"):
                response.setdefault("headers", {})[REPLAYED] = dict(_REPLAY_HEADER)
    return schema


def install(app: FastAPI) -> None:
    """Add the middleware (inside any added before it: add it before BodySizeLimit so oversized bodies are
    refused first) and document the header in the OpenAPI schema."""
    app.add_middleware(IdempotencyMiddleware)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
