"""The conformance corpus: MiniMax's published shapes, one JSON fixture each, written by hand from the docs.

Every fixture names its `source` (a MiniMax page, or the stored copy and the line of ../shared/reference/minimax-api.md)
and whether it is `documented` or `observed` (seen in real traffic, where the docs are silent). A fixture holds the
request, the answer MiniMax gives (`body`, or SSE `events` in order), what the adapters must make of it (`expect`),
and, when the simulator can be made to say the same thing, the request that makes it (`simulator`).

`shape` reduces an answer to its keys and value types; `diff` lists where two shapes disagree. Values never matter
to a shape (ids, token counts and texts differ from call to call), keys and types do: a key MiniMax sends that the
simulator lacks, or one it adds, or a string where MiniMax has a number, is a finding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
DONE = "[DONE]"


def load_all() -> list[tuple[str, dict[str, Any]]]:
    fixtures = []
    for path in sorted(FIXTURES.glob("*.json")):
        fixture = json.loads(path.read_text())
        fixtures.append((path.stem, fixture))
    return fixtures


def sse_bytes(events: Iterable[dict[str, Any]]) -> bytes:
    """The wire form of a fixture's events: `event:` lines where MiniMax sends them (Anthropic format)."""
    out = []
    for event in events:
        data = event["data"]
        text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
        out.append((f"event: {event['event']}\n" if "event" in event else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Events from an SSE body, as fixtures write them (`data` decoded unless it is `[DONE]`)."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if not data:
            continue
        text = "\n".join(data)
        event: dict[str, Any] = {"data": text if text == DONE else json.loads(text)}
        if name is not None:
            event["event"] = name
        events.append(event)
    return events


def shape(value: Any) -> Any:
    """Keys and types, recursively. A list's shape is the distinct shapes of its items, in first-seen order."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        seen: list[Any] = []
        for item in value:
            item_shape = shape(item)
            if item_shape not in seen:
                seen.append(item_shape)
        return ["list", *seen]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def event_shapes(events: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(event name, data shape) per event, consecutive repeats collapsed: a stream's order without its length."""
    out: list[tuple[str, Any]] = []
    for event in events:
        item = (str(event.get("event", "message")), shape(event["data"]))
        if not out or out[-1] != item:
            out.append(item)
    return out


def diff(expected: Any, actual: Any, *, path: str = "", optional: Sequence[str] = ()) -> list[str]:
    """Where `actual`'s shape departs from `expected`'s; keys at an `optional` path may be present or not."""
    where = path or "(top)"
    if isinstance(expected, dict) and isinstance(actual, dict):
        problems = []
        for key in expected.keys() | actual.keys():
            sub = f"{path}.{key}" if path else key
            if key not in actual:
                if sub not in optional:
                    problems.append(f"{sub}: missing (MiniMax sends it)")
            elif key not in expected:
                if sub not in optional:
                    problems.append(f"{sub}: extra (MiniMax does not send it)")
            else:
                problems += diff(expected[key], actual[key], path=sub, optional=optional)
        return sorted(problems)
    if isinstance(expected, list) and isinstance(actual, list):
        if expected == actual:
            return []
        if len(expected) == len(actual):
            # Index 0 is the "list" marker; items are compared in first-seen order, all under `path[]`.
            return [p for e, a in zip(expected[1:], actual[1:], strict=True) for p in
                    diff(e, a, path=f"{path}[]", optional=optional)]  # fmt: skip
        return [f"{where}: list items {expected[1:]} != {actual[1:]}"]
    if expected != actual:
        return [f"{where}: {expected} != {actual}"]
    return []
