"""The SSRF guard. No test sends traffic anywhere but loopback: refusals are checked before any connection,
and names resolve through a fake resolver (the real DNS is never asked)."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from service import netguard
from service.api.errors import APIError

PUBLIC = "93.184.216.34"
NAMES: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "public.example": [PUBLIC],
    "public6.example": ["2606:4700::1111"],
    "internal.example": ["10.0.0.5"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC, "192.168.1.20"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "loop.example": ["127.0.0.1"],
}


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lookup goes through this table; the list records which names were asked."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[netguard.IPAddress]:
        asked.append(host)
        if host not in NAMES:
            raise netguard.UnsafeURL(f"the host {host!r} does not resolve")
        return [ipaddress.ip_address(a) for a in NAMES[host]]

    monkeypatch.setattr(netguard, "resolve", resolve)
    return asked


REFUSED = [
    "http://127.0.0.1/",
    "http://127.8.9.10:8080/x",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://[::1]/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/",
    "http://100.127.255.254/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.1/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::1]/",
    "http://[2001:db8::1]/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://017700000001/",
    "http://internal.example/",
    "http://metadata.example/",
    "http://mixed.example/",
    "http://mapped.example/",
    "http://nowhere.example/",
    "ftp://public.example/file",
    "file:///etc/passwd",
    "gopher://public.example/",
    "javascript:alert(1)",
    "public.example/no-scheme",
    "http://user:secret@public.example/",
    "http://user@public.example/",
    "http://@public.example/",
    "http:///no-host",
    "http://[fe80::1%25eth0]/",
    "http://public.example:99999/",
    "http://public.example/\r\nX-Injected: 1",
    "https://public.example/" + "a" * 2100,
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(netguard.UnsafeURL):
        netguard.validate(url)


@pytest.mark.parametrize(
    "url",
    ["https://public.example/hook", "http://public6.example:8080/", f"http://{PUBLIC}/", "https://[2606:4700::1111]/"],
)
def test_public_addresses_pass(url: str) -> None:
    target = netguard.validate(url)
    assert all(netguard.refusal(ip) is None for ip in target.addresses)


def test_literal_addresses_are_not_looked_up(fake_dns: list[str]) -> None:
    netguard.validate(f"http://{PUBLIC}/")
    with pytest.raises(netguard.UnsafeURL):
        netguard.validate("http://2130706433/")
    assert fake_dns == []


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/", "http://localhost/", "http://[::1]/", "http://[::ffff:127.0.0.1]/"]
)
def test_allow_loopback_lets_loopback_through(url: str) -> None:
    netguard.validate(url, allow_loopback=True)


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://169.254.169.254/", "http://0.0.0.0/", "ftp://localhost/"])
def test_allow_loopback_allows_nothing_else(url: str) -> None:
    with pytest.raises(netguard.UnsafeURL):
        netguard.validate(url, allow_loopback=True)


def test_check_url_is_a_field_aware_422() -> None:
    with pytest.raises(APIError) as caught:
        netguard.check_url("http://169.254.169.254/", field="webhook_url", allow_loopback=False)
    assert (caught.value.status, caught.value.field) == (422, "webhook_url")
    assert caught.value.message.startswith("webhook_url: ")
    assert "link-local" in caught.value.message
    netguard.check_url("https://public.example/hook", allow_loopback=False)


# Connecting: only to the validated address.


def recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


def guarded(seen: list[httpx.Request], *, allow_loopback: bool = False) -> httpx.Client:
    return httpx.Client(transport=netguard.GuardedTransport(allow_loopback=allow_loopback, inner=recording(seen)))


@pytest.mark.parametrize("url", ["http://10.0.0.1/", "http://internal.example/", "file:///etc/passwd"])
def test_refused_before_any_connection(url: str) -> None:
    seen: list[httpx.Request] = []
    with guarded(seen) as client, pytest.raises(netguard.RefusedRequest):
        client.post(url, content=b"{}")
    assert seen == []


def test_dns_rebinding_connects_to_the_validated_address(monkeypatch: pytest.MonkeyPatch, fake_dns: list[str]) -> None:
    answers = iter([[PUBLIC], ["169.254.169.254"], ["169.254.169.254"]])

    def rebinding(host: str, port: int) -> list[netguard.IPAddress]:
        fake_dns.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    monkeypatch.setattr(netguard, "resolve", rebinding)
    seen: list[httpx.Request] = []
    with guarded(seen) as client:
        client.post("https://rebind.example:8443/hook?x=1", content=b"{}")
    (request,) = seen
    assert request.url.host == PUBLIC
    assert (request.url.port, request.url.raw_path) == (8443, b"/hook?x=1")
    assert request.headers["host"] == "rebind.example:8443"
    assert request.extensions["sni_hostname"] == "rebind.example"
    assert fake_dns == ["rebind.example"]  # asked once: the second (private) answer is never used
    # The next request resolves again, gets the private address, and is refused.
    with guarded(seen) as client, pytest.raises(netguard.RefusedRequest):
        client.post("https://rebind.example:8443/hook", content=b"{}")
    assert len(seen) == 1


@pytest.fixture
def server() -> Iterator[tuple[int, list[dict[str, str]], Callable[[int, dict[str, str]], None]]]:
    """A loopback server: records each request's headers, answers with the status set last (default 200)."""
    got: list[dict[str, str]] = []
    reply: dict[str, object] = {"status": 200, "headers": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            got.append({k.lower(): v for k, v in self.headers.items()})
            self.send_response(int(str(reply["status"])))
            headers = reply["headers"]
            assert isinstance(headers, dict)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    def answer(status: int, headers: dict[str, str]) -> None:
        reply.update(status=status, headers=headers)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_port, got, answer
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_loopback_connection_keeps_the_host_name(
    server: tuple[int, list[dict[str, str]], Callable[[int, dict[str, str]], None]],
) -> None:
    port, got, _ = server
    with netguard.guarded_client(allow_loopback=True, timeout=5) as client:
        assert client.post(f"http://loop.example:{port}/hook", content=b"{}").status_code == 200
    assert got[0]["host"] == f"loop.example:{port}"


def test_loopback_is_refused_by_default(
    server: tuple[int, list[dict[str, str]], Callable[[int, dict[str, str]], None]],
) -> None:
    port, got, _ = server
    with netguard.guarded_client(timeout=5) as client, pytest.raises(netguard.RefusedRequest):
        client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
    assert got == []


def test_redirects_are_not_followed(
    server: tuple[int, list[dict[str, str]], Callable[[int, dict[str, str]], None]],
) -> None:
    port, got, answer = server
    answer(302, {"location": f"http://127.0.0.1:{port}/elsewhere"})
    with netguard.guarded_client(allow_loopback=True, timeout=5) as client:
        response = client.post(f"http://127.0.0.1:{port}/hook", content=b"{}")
    assert response.status_code == 302
    assert len(got) == 1
