"""A webhook receiver for the chaos driver: `python -m benchmarks.chaos.receiver --port P --out FILE`.

Answers every POST with 204 and appends one JSON line per delivery to FILE: the `webhook-id` header (the event id,
the same on every retry), the event type and the time. Append-only, so a receiver stopped and started again on the
same port keeps adding to the same record; the driver counts distinct ids.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO


class _Handler(BaseHTTPRequestHandler):
    out: BinaryIO
    lock = threading.Lock()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            event_type = json.loads(body).get("type")
        except (ValueError, AttributeError):
            event_type = None
        line = {"id": self.headers.get("webhook-id"), "type": event_type, "at": time.time()}
        with self.lock:
            self.out.write(json.dumps(line).encode() + b"\n")
            self.out.flush()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def received(path: Path) -> list[dict[str, Any]]:
    """Every delivery recorded in `path` (a line cut off by a kill is skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos.receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with args.out.open("ab") as out:
        _Handler.out = out
        server = ThreadingHTTPServer(("127.0.0.1", args.port), _Handler)
        server.daemon_threads = True
        print(f"receiver listening on 127.0.0.1:{args.port}", flush=True)  # noqa: T201
        server.serve_forever()


if __name__ == "__main__":
    main()
