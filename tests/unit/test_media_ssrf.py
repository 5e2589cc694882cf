"""The SSRF policy on its own: which addresses and URLs are refused, and why."""

from __future__ import annotations

import pytest

from app.media.errors import FetchError, URLNotAllowedError
from app.media.ssrf import FetchPolicy, HostRules, blocked_reason, parse_ip

# (address, the label the refusal must name, the address named in the message)
BLOCKED: list[tuple[str, str, str]] = [
    ("127.0.0.1", "loopback", "127.0.0.1"),
    ("127.255.255.254", "loopback", "127.255.255.254"),
    ("10.0.0.5", "private", "10.0.0.5"),
    ("172.16.0.1", "private", "172.16.0.1"),
    ("172.31.255.255", "private", "172.31.255.255"),
    ("192.168.1.10", "private", "192.168.1.10"),
    ("169.254.1.1", "link-local", "169.254.1.1"),
    ("100.64.0.1", "CGNAT", "100.64.0.1"),
    ("100.127.255.254", "CGNAT", "100.127.255.254"),
    ("224.0.0.1", "multicast", "224.0.0.1"),
    ("239.255.255.250", "multicast", "239.255.255.250"),
    ("240.0.0.1", "reserved", "240.0.0.1"),
    ("255.255.255.255", "broadcast", "255.255.255.255"),
    ("0.0.0.0", "unspecified", "0.0.0.0"),
    ("0.1.2.3", "reserved", "0.1.2.3"),
    ("192.0.0.8", "reserved", "192.0.0.8"),
    ("192.0.2.1", "documentation", "192.0.2.1"),
    ("198.51.100.7", "documentation", "198.51.100.7"),
    ("203.0.113.9", "documentation", "203.0.113.9"),
    ("198.18.0.1", "benchmarking", "198.18.0.1"),
    ("192.88.99.1", "6to4-relay anycast", "192.88.99.1"),
    ("169.254.169.254", "cloud metadata", "169.254.169.254"),
    ("169.254.170.2", "cloud metadata", "169.254.170.2"),
    ("100.100.100.200", "cloud metadata", "100.100.100.200"),
    ("168.63.129.16", "cloud metadata", "168.63.129.16"),
    ("192.0.0.192", "cloud metadata", "192.0.0.192"),
    ("fd00:ec2::254", "cloud metadata", "fd00:ec2::254"),
    ("::1", "loopback", "::1"),
    ("::", "unspecified", "::"),
    ("fe80::1", "link-local", "fe80::1"),
    ("fe80::1%eth0", "link-local", "fe80::1"),
    ("fec0::1", "site-local", "fec0::1"),
    ("fc00::1", "unique-local", "fc00::1"),
    ("fd12:3456::1", "unique-local", "fd12:3456::1"),
    ("ff02::1", "multicast", "ff02::1"),
    ("2001:db8::1", "documentation", "2001:db8::1"),
    ("3fff::1", "documentation", "3fff::1"),
    ("100::1", "discard-only", "100::1"),
    ("2001:2::1", "benchmarking", "2001:2::1"),
    ("4000::1", "reserved", "4000::1"),
    # IPv6 forms that carry a blocked IPv4 address
    ("::ffff:127.0.0.1", "loopback", "127.0.0.1"),
    ("::ffff:10.0.0.5", "private", "10.0.0.5"),
    ("::ffff:169.254.169.254", "cloud metadata", "169.254.169.254"),
    ("::ffff:0:7f00:1", "loopback", "127.0.0.1"),  # IPv4-translated (SIIT)
    ("::127.0.0.1", "loopback", "127.0.0.1"),  # IPv4-compatible
    ("64:ff9b::7f00:1", "loopback", "127.0.0.1"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "cloud metadata", "169.254.169.254"),  # NAT64 of the metadata IP
    ("64:ff9b:1::1", "local-use NAT64", "64:ff9b:1::1"),
    ("64:ff9b:1::a00:5", "local-use NAT64", "64:ff9b:1::a00:5"),
    ("2002:7f00:1::1", "loopback", "127.0.0.1"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:10a::1", "private", "192.168.1.10"),  # 6to4 of 192.168.1.10
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback", "127.0.0.1"),  # Teredo client
    ("2001:0:a00:5::1", "private", "10.0.0.5"),  # Teredo server
    ("2001:0:808:808::f7f7:f7f7", "Teredo", "2001:0:808:808::f7f7:f7f7"),
]

ALLOWED_PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.32.0.1",  # just above 172.16/12
    "2606:4700:4700::1111",
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public
    "64:ff9b::808:808",  # NAT64 of a public address
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize(("address", "label", "named"), BLOCKED)
def test_blocked_address_is_refused_with_its_reason(address: str, label: str, named: str) -> None:
    ip = parse_ip(address)
    assert ip is not None
    reason = blocked_reason(ip)
    assert reason is not None, address
    assert label in reason.label
    assert f"({named}" in reason.describe()

    policy = FetchPolicy()
    target = policy.parse_url("http://evil.test/x.png", what="image URL")
    with pytest.raises(URLNotAllowedError) as info:
        policy.check_addresses(target, [address], what="image URL")
    assert info.value.status == 400
    assert info.value.message.startswith("image URL resolves to ")
    assert f"{label} address ({named}" in info.value.message


@pytest.mark.parametrize("address", ALLOWED_PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    ip = parse_ip(address)
    assert ip is not None
    assert blocked_reason(ip) is None
    policy = FetchPolicy()
    target = policy.parse_url("https://example.com/")
    assert [str(a) for a in policy.check_addresses(target, [address])] == [str(ip)]


def test_one_blocked_address_among_public_ones_refuses_the_host() -> None:
    policy = FetchPolicy()
    target = policy.parse_url("http://mixed.test/a.png", what="image URL")
    with pytest.raises(URLNotAllowedError) as info:
        policy.check_addresses(target, ["93.184.216.34", "10.0.0.5"], what="image URL")
    assert info.value.message == "image URL resolves to a private address (10.0.0.5)"


def test_address_literal_in_the_url_says_points_to() -> None:
    policy = FetchPolicy()
    target = policy.parse_url("http://[::1]:8080/x", what="image URL")
    with pytest.raises(URLNotAllowedError) as info:
        policy.check_addresses(target, [str(target.literal)], what="image URL")
    assert info.value.message == "image URL points to a loopback address (::1)"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "must use http or https, not file:"),
        ("ftp://example.com/a.png", "must use http or https, not ftp:"),
        ("gopher://example.com/", "must use http or https, not gopher:"),
        ("javascript:alert(1)", "must use http or https"),
        ("http://user:pw@example.com/a.png", "must not carry credentials"),
        ("http://2130706433/", "ambiguous numeric host"),
        ("http://0x7f000001/", "ambiguous numeric host"),
        ("http://127.1/", "ambiguous numeric host"),
        ("http://10.1/", "ambiguous numeric host"),
    ],
)
def test_url_form_is_checked(url: str, fragment: str) -> None:
    with pytest.raises(URLNotAllowedError) as info:
        FetchPolicy().parse_url(url, what="image URL")
    assert fragment in info.value.message
    assert info.value.message.startswith("image URL ")


@pytest.mark.parametrize("url", ["", "not a url", "/relative/path.png", "http://", "http:///x"])
def test_malformed_urls_are_400(url: str) -> None:
    with pytest.raises(FetchError) as info:
        FetchPolicy().parse_url(url, what="image URL")
    assert info.value.status == 400


def test_url_parts_are_normalised() -> None:
    target = FetchPolicy().parse_url("HTTPS://Bücher.Example./a?b=1")
    assert target.scheme == "https"
    assert target.host == "xn--bcher-kva.example"
    assert target.port == 443
    assert target.literal is None


def test_allow_list_by_name_widens_but_never_to_metadata() -> None:
    policy = FetchPolicy(allow=["nas.lan", "*.home.arpa"])
    nas = policy.parse_url("http://nas.lan/photo.jpg")
    assert [str(a) for a in policy.check_addresses(nas, ["192.168.1.20"])] == ["192.168.1.20"]
    cam = policy.parse_url("http://cam.home.arpa/snap.jpg")
    assert policy.check_addresses(cam, ["10.0.0.9"])
    with pytest.raises(URLNotAllowedError, match="cloud metadata"):
        policy.check_addresses(nas, ["169.254.169.254"])
    other = policy.parse_url("http://other.lan/x")
    with pytest.raises(URLNotAllowedError, match="private"):
        policy.check_addresses(other, ["192.168.1.20"])


def test_allow_list_by_network_widens_for_any_name() -> None:
    policy = FetchPolicy(allow=["192.168.1.0/24", "[fd00::1]"])
    target = policy.parse_url("http://photos.test/")
    assert policy.check_addresses(target, ["192.168.1.77", "fd00::1"])
    assert policy.check_addresses(target, ["::ffff:192.168.1.5"])  # mapped form matches too
    with pytest.raises(URLNotAllowedError, match="private"):
        policy.check_addresses(target, ["192.168.2.1"])


def test_deny_list_narrows_and_wins_over_allow() -> None:
    policy = FetchPolicy(allow=["*.example.com"], deny=["bad.example.com", "93.184.216.0/24"])
    with pytest.raises(URLNotAllowedError, match="deny list"):
        policy.parse_url("https://bad.example.com/x")
    ok = policy.parse_url("https://good.example.com/x")
    with pytest.raises(URLNotAllowedError, match=r"denied address \(93\.184\.216\.34\)"):
        policy.check_addresses(ok, ["93.184.216.34"])


def test_bad_host_rules_are_rejected() -> None:
    with pytest.raises(ValueError, match="not a host name"):
        HostRules.parse(["exa mple.com"])
    rules = HostRules.parse(["Example.COM.", ".lan", "10.0.0.0/8"])
    assert rules.matches_name("example.com")
    assert rules.matches_name("nas.lan")
    assert not rules.matches_name("lan")
    assert rules.matches_ip(parse_ip("10.2.3.4"))  # type: ignore[arg-type]


def test_unresolvable_or_garbage_addresses_are_errors() -> None:
    policy = FetchPolicy()
    target = policy.parse_url("http://nowhere.test/")
    with pytest.raises(FetchError, match=r"could not be resolved \(nowhere\.test\)"):
        policy.check_addresses(target, [])
    with pytest.raises(FetchError, match="invalid address"):
        policy.check_addresses(target, ["not-an-ip"])
