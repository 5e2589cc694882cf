"""Which URLs and addresses cascade may fetch: the SSRF policy.

`FetchPolicy.parse_url` checks a URL's form (http/https only, no credentials, no ambiguous
numeric hosts, not on the deny list); `FetchPolicy.check_addresses` checks every address its
host resolved to. A host is refused if ANY of its addresses is blocked, so a name that resolves
to one public and one private address is refused as a whole. The caller then connects to one of
the checked addresses itself (see `app.media.fetch`): there is no second lookup to rebind.

Blocked by default: loopback, private (RFC 1918), link-local, shared/CGNAT (100.64/10),
multicast, broadcast, unspecified, reserved and documentation/benchmarking ranges, IPv6
site-local and unique-local, cloud metadata endpoints, and IPv6 addresses that embed a blocked
IPv4 address (IPv4-mapped and -translated, IPv4-compatible, NAT64 64:ff9b::/96, 6to4, Teredo);
Teredo, IPv4-compatible and IPv4-translated addresses are refused whatever they embed.
The operator may widen the policy with an allow list (`CASCADE_FETCH_ALLOW_HOSTS`: a homelab
host with a private address) and narrow it with a deny list (`CASCADE_FETCH_DENY_HOSTS`), which
wins over the allow list. Metadata endpoints stay blocked for allow-listed *names*; only an
allow-listed address or network that contains them opens them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from urllib.parse import unquote

import httpx

from app.media.errors import FetchError, URLNotAllowedError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

METADATA = "a cloud metadata"

# Cloud metadata and host-agent endpoints. Most sit in ranges blocked anyway; they are named so
# the error says what was hit, and so an allow-listed name cannot reach them. 168.63.129.16
# (Azure's WireServer) is a public address and is blocked only by this list.
_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack
        "169.254.169.253",  # AWS DNS
        "169.254.169.123",  # AWS time sync
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (legacy)
        "168.63.129.16",  # Azure WireServer
    )
)


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ip_network(net), label) for net, label in pairs)


# First match wins: specific entries come before the ranges that contain them.
_IPV4_BLOCKED = _nets(
    ("0.0.0.0/32", "an unspecified"),
    ("0.0.0.0/8", "a reserved"),
    ("10.0.0.0/8", "a private"),
    ("172.16.0.0/12", "a private"),
    ("192.168.0.0/16", "a private"),
    ("127.0.0.0/8", "a loopback"),
    ("169.254.0.0/16", "a link-local"),
    ("100.64.0.0/10", "a CGNAT"),
    ("192.0.0.0/24", "a reserved"),
    ("192.0.2.0/24", "a documentation"),
    ("198.51.100.0/24", "a documentation"),
    ("203.0.113.0/24", "a documentation"),
    ("198.18.0.0/15", "a benchmarking"),
    ("192.88.99.0/24", "a 6to4-relay anycast"),
    ("224.0.0.0/4", "a multicast"),
    ("255.255.255.255/32", "a broadcast"),
    ("240.0.0.0/4", "a reserved"),
)

_IPV6_BLOCKED = _nets(
    ("::/128", "an unspecified"),
    ("::1/128", "a loopback"),
    ("::/96", "a deprecated IPv4-compatible"),
    ("::ffff:0:0:0/96", "a reserved"),
    ("64:ff9b:1::/48", "a local-use NAT64"),
    ("100::/64", "a discard-only"),
    ("2001:db8::/32", "a documentation"),
    ("3fff::/20", "a documentation"),
    ("2001:2::/48", "a benchmarking"),
    ("2001::/32", "a Teredo"),
    ("2001::/23", "a reserved"),
    ("5f00::/16", "a reserved"),
    ("fc00::/7", "a unique-local"),
    ("fe80::/10", "a link-local"),
    ("fec0::/10", "a site-local"),
    ("ff00::/8", "a multicast"),
)

# Everything outside global unicast 2000::/3 is reserved, except the embedding prefixes that are
# checked by what they embed.
_IPV6_GLOBAL_UNICAST = ip_network("2000::/3")
_NAT64 = ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ip_network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = ip_network("::/96")
_TEREDO = ip_network("2001::/32")


@dataclass(frozen=True)
class Blocked:
    """Why an address is refused: `label` like "a private", and the address it applies to."""

    label: str
    address: IPAddress
    via: str | None = None

    def describe(self) -> str:
        where = f"{self.address}, embedded in {self.via}" if self.via else str(self.address)
        return f"{self.label} address ({where})"


def _embedded_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address]]:
    """IPv4 addresses an IPv6 address carries, with the kind of embedding."""
    found: list[tuple[str, IPv4Address]] = []
    packed = ip.packed
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    if ip in _IPV4_TRANSLATED:
        found.append(("IPv4-translated", IPv4Address(packed[12:])))
    if ip in _NAT64:
        found.append(("NAT64", IPv4Address(packed[12:])))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip in _TEREDO and ip.teredo is not None:
        server, client = ip.teredo
        found.append(("Teredo", server))
        found.append(("Teredo", client))
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        found.append(("IPv4-compatible", IPv4Address(packed[12:])))
    return found


def _ipv4_reason(ip: IPv4Address) -> str | None:
    if ip in _METADATA_ADDRESSES:
        return METADATA
    for net, label in _IPV4_BLOCKED:
        if ip in net:
            return label
    return None


def blocked_reason(ip: IPAddress) -> Blocked | None:
    """Why `ip` may not be fetched from by default, or None if it is a public address."""
    if isinstance(ip, IPv4Address):
        label = _ipv4_reason(ip)
        return Blocked(label, ip) if label else None
    if ip.scope_id:
        ip = IPv6Address(ip.compressed.split("%", 1)[0])
    if ip in _METADATA_ADDRESSES:
        return Blocked(METADATA, ip)
    embedded = _embedded_ipv4(ip)
    for kind, inner in embedded:
        label = _ipv4_reason(inner)
        if label:
            return Blocked(label, inner, via=f"{kind} {ip}")
    for net, label in _IPV6_BLOCKED:
        if ip in net:
            return Blocked(label, ip)
    if embedded:
        # A public IPv4 address reached through IPv4-mapping, NAT64 or 6to4.
        return None
    if ip not in _IPV6_GLOBAL_UNICAST:
        return Blocked("a reserved", ip)
    return None


def plain_address(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged."""
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ip(text: str) -> IPAddress | None:
    """An address from a host or resolver string (brackets, `%25` zone ids), else None."""
    candidate = unquote(text.strip().strip("[]"))
    try:
        return ip_address(candidate)
    except ValueError:
        return None


@dataclass(frozen=True)
class HostRules:
    """Host names, name suffixes and address networks, parsed from operator entries."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostRules:
        """Entries: `nas.lan` (that name), `*.lan` or `.lan` (names under lan), `10.0.0.7`,
        `192.168.1.0/24`, `[fd00::1]`. Raises ValueError on an entry that is none of these."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ip_network(unquote(entry.strip("[]")), strict=False))
                continue
            except ValueError:
                pass
            name = entry[2:] if entry.startswith("*.") else entry.lstrip(".")
            name = name.rstrip(".")
            if not _HOSTNAME.fullmatch(name):
                raise ValueError(f"not a host name, address or network: {raw!r}")
            if entry.startswith(("*.", ".")):
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def matches_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def matches_ip(self, ip: IPAddress) -> bool:
        plain = plain_address(ip)
        return any(plain.version == net.version and plain in net for net in self.networks)


_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


@dataclass(frozen=True)
class Target:
    """A checked URL: what to connect to and what to call it (Host header, TLS name)."""

    url: httpx.URL
    scheme: str
    host: str  # ASCII (IDNA), lower case, no trailing dot, no brackets
    port: int
    literal: IPAddress | None  # the host, when the URL names an address

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")


class FetchPolicy:
    """The SSRF policy: URL form checks and address checks, with operator allow/deny lists."""

    def __init__(self, *, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow = HostRules.parse(allow)
        self.deny = HostRules.parse(deny)

    def parse_url(self, url: str, *, what: str = "URL") -> Target:
        """Check the form of `url`; raise `URLNotAllowedError`/`FetchError` naming the rule."""
        if len(url) > 8192:
            raise FetchError(f"{what} is longer than 8192 characters", code="invalid_url")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError):
            raise FetchError(f"{what} is not a valid URL", code="invalid_url") from None
        scheme = parsed.scheme.lower()
        if not scheme:
            raise FetchError(f"{what} must be an absolute http or https URL", code="invalid_url")
        if scheme not in ("http", "https"):
            raise URLNotAllowedError(f"{what} must use http or https, not {scheme}:")
        if parsed.userinfo:
            raise URLNotAllowedError(f"{what} must not carry credentials (user:password@)")
        try:
            host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            raise FetchError(f"{what} has an invalid host", code="invalid_url") from None
        if not host:
            raise FetchError(f"{what} has no host", code="invalid_url")
        literal = parse_ip(host)
        if literal is None:
            last = host.rsplit(".", 1)[-1]
            if _NUMERIC_LABEL.fullmatch(last):
                # `127.1`, `2130706433`, `0x7f000001`: resolvers read these as addresses in
                # different ways; only the plain dotted-quad form is accepted.
                raise URLNotAllowedError(f"{what} has an ambiguous numeric host ({host})")
            if not _HOSTNAME.fullmatch(host):
                raise FetchError(f"{what} has an invalid host", code="invalid_url")
        if parsed.port is not None and not 1 <= parsed.port <= 65535:
            raise FetchError(f"{what} has an invalid port", code="invalid_url")
        port = parsed.port or (443 if scheme == "https" else 80)
        target = Target(parsed, scheme, host, port, literal)
        if literal is None and self.deny.matches_name(host):
            raise URLNotAllowedError(f"{what} host {host} is not allowed (deny list)")
        return target

    def check_addresses(
        self, target: Target, addresses: Sequence[str], *, what: str = "URL"
    ) -> list[IPAddress]:
        """The addresses to connect to, in order; raise if any of them is not allowed."""
        verb = "points to" if target.literal is not None else "resolves to"
        checked: list[IPAddress] = []
        for text in addresses:
            ip = parse_ip(text)
            if ip is None:
                raise FetchError(f"{what} host {target.host} resolved to an invalid address")
            if ip not in checked:
                checked.append(ip)
        if not checked:
            raise FetchError(f"{what} host could not be resolved ({target.host})")
        name_allowed = target.literal is None and self.allow.matches_name(target.host)
        for ip in checked:
            if self.deny.matches_ip(ip):
                raise URLNotAllowedError(f"{what} {verb} a denied address ({ip}) (deny list)")
            if self.allow.matches_ip(ip):
                continue
            reason = blocked_reason(ip)
            if reason is None or (name_allowed and reason.label != METADATA):
                continue
            raise URLNotAllowedError(f"{what} {verb} {reason.describe()}")
        return checked
