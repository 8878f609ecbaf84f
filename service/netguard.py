"""The SSRF guard for every user-supplied URL we call (webhooks now, media fetch later).

OWASP's webhook rules: http/https only, no userinfo; resolve the name (A and AAAA) and refuse any address that is
not public (loopback, private, link-local with the cloud metadata service, CGNAT, unique-local, unspecified,
multicast, reserved, and the IPv6 forms that embed such an IPv4 address); then connect to the address that was
validated, never to a second resolution of the name (DNS rebinding), and never follow a redirect.

`GuardedTransport` does all of it for an httpx client: it resolves once, validates every address, and sends the
request to the validated IP with the original Host header and TLS server name, so virtual hosting and
certificate checks still see the real name.

One rule set for every URL we accept (webhooks here, media URLs in `service.media.validation`): `parse` reads the
host the way a WHATWG URL parser (browsers, most HTTP clients, MiniMax's fetcher) will, so `127.0.0.①`,
`127.0.0。1`, fullwidth digits, `127.0.0.%31` and `foo.localhost。` are checked as the loopback names they are.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httpx
import idna

from service.api.errors import APIError
from service.config import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Not covered by `is_private` in every Python version, so named explicitly.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
# WHATWG URL: a host whose last label is a number is an IPv4 address, in whatever base it was written.
_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
# WHATWG's forbidden domain code points (after mapping), which no host name we call may hold.
_FORBIDDEN_IN_HOST = set(" #%/:<>?@[\\]^|")
# Names that never leave the machine or the private network, refused where no DNS answer is asked (media URLs).
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
MAX_URL_LENGTH = 2048


class UnsafeURL(Exception):
    """A URL we refuse to call; the message says why in words the user can act on."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Parsed:
    """A URL that passed the static rules: `host` normalized (ASCII, lower case, no trailing dot), `literal` the
    IP address it names, if it names one."""

    scheme: str
    host: str
    port: int
    literal: IPAddress | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Target:
    """A URL whose every resolved address passed the guard; `addresses[0]` is the one to connect to."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


def resolve(host: str, port: int) -> list[IPAddress]:
    """A and AAAA records of `host`, in the resolver's order. The one place we ask DNS (tests replace it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"the host {host!r} does not resolve ({exc})") from None
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def refusal(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why we will not connect to `ip`, or None when it is a public address (or loopback, when allowed)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            reason = refusal(embedded, allow_loopback=allow_loopback)
            return f"{reason} (embedded in {ip})" if reason else None
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address"
    if ip.is_link_local:
        return f"{ip} is link-local (where cloud metadata services live)"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return f"{ip} is in the carrier-grade NAT range 100.64.0.0/10"
    if ip.is_reserved:
        return f"{ip} is a reserved address"
    if ip.is_private:
        return f"{ip} is a private address"
    if not ip.is_global:
        return f"{ip} is not a public internet address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _literal(host: str) -> IPAddress | None:
    """The IP a host names literally, or None for a name. Refuses the ambiguous IPv4 spellings
    (`2130706433`, `0x7f.1`, `0177.0.0.1`) that parsers disagree on."""
    if ":" in host:
        if "%" in host:
            raise UnsafeURL("IPv6 zone identifiers are not allowed in URLs we call")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise UnsafeURL(f"{host!r} is not a valid IPv6 address") from None
    if not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise UnsafeURL(f"{host!r} is not a plain IPv4 address: write it as four decimal numbers") from None


def normalize_host(host: str) -> str:
    """The host as a WHATWG URL parser reads it: percent-decoded, mapped by UTS #46 (NFKC, case folded, fullwidth
    and ideographic dots to `.`, `①` to `1`), internationalized labels as their ASCII `xn--` form, without a
    trailing dot. An IPv6 literal (it holds `:`) is returned lower-cased. UnsafeURL when it is no valid host."""
    if ":" in host:
        return host.lower()
    if "%" in host:
        try:
            host = unquote(host, errors="strict")
        except UnicodeDecodeError:
            raise UnsafeURL("the host is percent-encoded bytes that are not UTF-8") from None
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        raise UnsafeURL(f"{host!r} is not a valid host name ({exc})") from None
    if _FORBIDDEN_IN_HOST.intersection(mapped) or any(ch.isspace() or ord(ch) < 0x20 for ch in mapped):
        raise UnsafeURL(f"{host!r} is not a valid host name")
    # "example.com." is the same name as "example.com"; one spelling keeps the checks below simple.
    labels = mapped.removesuffix(".").split(".")
    out: list[str] = []
    for label in labels:
        if not label:
            raise UnsafeURL(f"{host!r} is not a valid host name (an empty label)")
        try:
            if label.startswith("xn--"):
                idna.ulabel(label)  # only a valid A-label: its Unicode form was checked like any other
            elif not label.isascii():
                label = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise UnsafeURL(f"{host!r} is not a valid host name ({exc})") from None
        out.append(label)
    return ".".join(out)


def parse(url: str) -> Parsed:
    """The static rules every URL we accept must pass, before any DNS: length, no whitespace, control characters
    or backslashes, http(s) only, no user name or password, a host normalized by `normalize_host`, and no
    ambiguous spelling of an IPv4 address. UnsafeURL says which rule was broken."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeURL("the URL contains whitespace or control characters")
    if "\\" in url:
        # WHATWG parsers read `\` as `/` in http(s) URLs (`http://127.0.0.1\.example.com/` is loopback), Python's
        # urlsplit does not: refused rather than read two ways.
        raise UnsafeURL("the URL contains a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"the URL is malformed ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"only http and https URLs can be called, not {scheme or 'a URL without a scheme'}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("the URL must not contain a user name or password")
    if not parts.hostname:
        raise UnsafeURL("the URL has no host")
    host = normalize_host(parts.hostname)
    port = port or (443 if scheme == "https" else 80)
    return Parsed(scheme=scheme, host=host, port=port, literal=_literal(host))


def internal_name(host: str) -> bool:
    """A name (normalized, not an IP literal) that is plainly internal without asking DNS: `localhost`, a single
    label, or a name under .localhost, .local, .internal, .localdomain or .home.arpa."""
    return host == "localhost" or host.endswith(_INTERNAL_SUFFIXES) or "." not in host


def validate(url: str, *, allow_loopback: bool = False) -> Target:
    """Parse, resolve and check `url`; raises UnsafeURL with the reason."""
    parsed = parse(url)
    scheme, host, port, literal = parsed.scheme, parsed.host, parsed.port, parsed.literal
    if literal is None and not allow_loopback and internal_name(host):
        # The media rule, before DNS: such a name is internal whatever the resolver answers today.
        raise UnsafeURL(f"{host!r} is not a public host name; only public addresses can be called")
    addresses = [literal] if literal is not None else resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"the host {host!r} does not resolve")
    for ip in addresses:
        reason = refusal(ip, allow_loopback=allow_loopback)
        if reason is not None:
            named = "" if literal is not None else f" (an address of {host})"
            raise UnsafeURL(f"{reason}{named}; only public addresses can be called")
    return Target(scheme=scheme, host=host, port=port, addresses=tuple(addresses))


def check_url(url: str, *, field: str = "webhook_url", allow_loopback: bool | None = None) -> None:
    """Validate a user-supplied URL at intake: 422 naming `field` when we would refuse to call it.

    `allow_loopback` defaults to the MMJOBS_WEBHOOK_ALLOW_LOOPBACK setting."""
    if allow_loopback is None:
        allow_loopback = get_settings().webhook_allow_loopback
    try:
        validate(url, allow_loopback=allow_loopback)
    except UnsafeURL as exc:
        raise APIError(422, "invalid_request", f"{field}: {exc}", field=field) from None


class RefusedRequest(httpx.RequestError):
    """The guard refused the URL before any connection was made."""


class GuardedTransport(httpx.BaseTransport):
    """Validates each request's URL and connects to the validated address only (no second DNS lookup)."""

    def __init__(self, *, allow_loopback: bool = False, inner: httpx.BaseTransport | None = None) -> None:
        self.allow_loopback = allow_loopback
        # No keep-alive: the pool is keyed by IP, and a TLS connection made for one host name must never carry
        # a request for another name that happens to share the address.
        self.inner = inner or httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0), trust_env=False)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            target = validate(str(request.url), allow_loopback=self.allow_loopback)
        except UnsafeURL as exc:
            raise RefusedRequest(str(exc), request=request) from None
        host_header = request.headers.get("host") or request.url.netloc.decode("ascii")
        request.url = request.url.copy_with(host=str(target.addresses[0]))
        request.headers["host"] = host_header
        if target.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def guarded_client(*, allow_loopback: bool = False, timeout: float = 15.0) -> httpx.Client:
    """An httpx client for user-supplied URLs: guarded, no redirects, no proxies from the environment."""
    return httpx.Client(
        transport=GuardedTransport(allow_loopback=allow_loopback),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
