"""OpenAPI links from a create response to the operations on what it created, so clients and schema-driven tools
(schemathesis' stateful phase) follow an id from one call to the next."""

from __future__ import annotations

from typing import Any


def id_links(**targets: str) -> dict[str, Any]:
    """`{"links": ...}` for a response whose body has the new resource's `id`; each target is "METHOD /path/{param}"
    (the path as the document has it), e.g. `GetJob="GET /v1/jobs/{job_id}"`."""
    links: dict[str, Any] = {}
    for name, target in targets.items():
        method, path = target.split(" ", 1)
        param = path[path.index("{") + 1 : path.index("}")]
        pointer = path.replace("~", "~0").replace("/", "~1")
        links[name] = {
            "operationRef": f"#/paths/{pointer}/{method.lower()}",
            "parameters": {param: "$response.body#/id"},
        }
    return {"links": links}
