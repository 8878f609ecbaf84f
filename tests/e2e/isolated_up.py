"""Run by tests/e2e/test_embedded.py inside `unshare --net --mount` (as root): a machine with only Python.

Brings loopback up (the namespace has nothing else: no Postgres, no Redis, no network), hides the system's
Postgres and Redis/Valkey binaries behind bind mounts, then does what a new user does: `mmjobs up` in a fresh
directory with no variable set, a job submitted with the key it printed, then the admin and client commands with no
variable set, then Ctrl-C. Prints one JSON report on stdout for the test to check; asserts nothing itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

SYSTEM_SERVERS = ("redis-server", "valkey-server", "postgres", "pg_ctl", "pg_ctlcluster", "initdb")
HIDDEN_DIRS = ("/usr/lib/postgresql",)
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def hide_system_servers() -> list[str]:
    """Bind-mount an empty directory over the system's Postgres tree and /dev/null over each server binary."""
    empty = tempfile.mkdtemp(prefix="empty-")
    hidden = []
    for directory in HIDDEN_DIRS:
        if Path(directory).is_dir():
            subprocess.run(["mount", "--bind", empty, directory], check=True)
            hidden.append(directory)
    for name in SYSTEM_SERVERS:
        for folder in ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"):
            path = Path(folder, name)
            target = str(path.resolve())
            if path.exists() and target not in hidden:
                subprocess.run(["mount", "--bind", "/dev/null", target], check=True)
                hidden.append(target)
    return hidden


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return {"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def main(work: Path, mmjobs: str) -> dict[str, Any]:
    report: dict[str, Any] = {"hidden": hide_system_servers()}
    loopback_up()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMJOBS_", "MINIMAX_"))}
    env |= {"COLUMNS": "200", "NO_COLOR": "1"}
    report["system_servers_found"] = {n: shutil.which(n, path=env.get("PATH")) for n in SYSTEM_SERVERS}
    report["default_ports_answer"] = {p: answers(p) for p in (5432, 6379, 8000)}
    log = work / "up.log"
    with log.open("wb") as sink:
        up = subprocess.Popen([mmjobs, "up"], cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # As long as `up` lives: it reports a stuck or dead start itself, and exits.
        while "is running" not in log.read_text() and up.poll() is None:
            time.sleep(0.5)
        banner = log.read_text()
        report["banner"] = banner
        report["up_alive"] = up.poll() is None
        if up.poll() is not None:
            return report
        found = re.search(r"API key\s+(mmj_\S+)", banner)
        report["key"] = key = found.group(1) if found else ""
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": "MiniMax-M2.7", "params": {"max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}}
        created = httpx.post("http://127.0.0.1:8000/v1/jobs", headers=headers, json=body, timeout=30)
        report["submit_status"] = created.status_code
        job = created.json()
        for _ in range(600):
            job = httpx.get(f"http://127.0.0.1:8000/v1/jobs/{job['id']}", headers=headers, timeout=30).json()
            if job["status"] in ("succeeded", "failed", "canceled", "expired"):
                break
            time.sleep(0.5)
        report["job"] = job
        report["keys_list"] = run([mmjobs, "keys", "list", "--json"], work, env)
        report["usage"] = run([mmjobs, "usage", "--group-by", "model", "--json"], work, env)
        report["cli_job"] = run([mmjobs, "job", "submit", "--model", "MiniMax-M2.7", "--prompt", "hello", "--wait"],
                                work, env)  # fmt: skip
        report["up_json"] = json.loads((work / ".mmjobs" / "up.json").read_text())
    finally:
        up.send_signal(signal.SIGINT)
        try:
            report["up_exit"] = up.wait(180)
        except subprocess.TimeoutExpired:
            up.kill()
            report["up_exit"] = "killed"
    report["log_after_stop"] = log.read_text()[-3000:]
    ports = report.get("up_json", {}).get("embedded", {})
    report["answering_after_stop"] = {name: answers(port) for name, port in ports.items()} | {"api": answers(8000)}
    report["keys_list_after_stop"] = run([mmjobs, "keys", "list"], work, env)
    # `make test` on this machine: the tests start their own servers (tests/servers.py) where none answers.
    root = Path(__file__).resolve().parents[2]
    report["pytest"] = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/observability/test_health.py"], root, env)  # fmt: skip
    return report


if __name__ == "__main__":
    sys.stdout.write(json.dumps(main(Path(sys.argv[1]), sys.argv[2])) + "\n")
