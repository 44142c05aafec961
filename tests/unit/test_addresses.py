"""Host, port and origin canonicalisation (tcletd.policy.addresses)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.addresses import ipv4_spellings

from tcletd.policy.addresses import (
    CanonicalHost,
    Origin,
    canonical_host,
    network_keys,
    parse_ipv4,
    parse_port,
)
from tcletd.shared.errors import RequestError

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "0X7F000001",
    "0177.0.0.1",
    "0177.0.0.01",
    "127.1",
    "127.0.1",
    "0x7f.1",
    "0x7f.0.0.0x1",
    "127.0.0.1.",
    " 127.0.0.1 ",
    "\t127.0.0.1\n",
    "::ffff:127.0.0.1",
    "::FFFF:7F00:1",
    "[::ffff:127.0.0.1]",
    # Fullwidth digits and dots: IDNA nameprep folds them to ASCII.
    "\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11",
]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_every_ipv4_spelling_is_one_address(spelling: str) -> None:
    assert canonical_host(spelling) == CanonicalHost("127.0.0.1", IPv4Address("127.0.0.1"))


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("FD00:EC2::254", "fd00:ec2::254"),
        ("[FE80::1%eth0]", "fe80::1%eth0"),
    ],
)
def test_ipv6_spellings(spelling: str, canonical: str) -> None:
    host = canonical_host(spelling)
    assert host.text == canonical
    assert isinstance(host.ip, IPv6Address)


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  WWW.Example.com.  ", "www.example.com"),
        ("Bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.EXAMPLE.", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("_sip._tcp.example.com", "_sip._tcp.example.com"),
        ("1.2.3.256", "1.2.3.256"),  # not an address inet_aton accepts, so a name
        ("localhost", "localhost"),
    ],
)
def test_name_spellings(spelling: str, canonical: str) -> None:
    assert canonical_host(spelling) == CanonicalHost(canonical, None)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty host"),
        ("   ", "empty host"),
        ("a" * 254, "longer than 253"),
        (".".join(["abcdefghi"] * 26), "longer than 253"),
        ("x" * 2000, "too long"),
        ("exa\x00mple.com", "control character"),
        ("example.com\x00", "control character"),
        ("exa\x1bmple.com", "control character"),
        ("exa\u200dmple.com", "control character"),
        ("-oProxyCommand", "starts with -"),
        (" -x", "starts with -"),
        ("exa mple.com", "white space inside"),
        ("127.0.0.1 foo", "white space inside"),
        ("a..b", "not a host name"),
        ("example.com..", "not a host name"),
        ("exa$mple.com", "not a host name"),
        ("*.example.com", "not a host name"),
        ("[127.0.0.1]", "brackets"),
        ("[::1", "not a host name"),
        ("1:2:3", "not a host name"),
        ("fe80::1%e\u00e9", "not a host name"),
        ("a" * 64 + ".com", "not a host name"),
    ],
)
def test_refused_hosts(text: str, why: str) -> None:
    with pytest.raises(RequestError, match=why) as info:
        canonical_host(text)
    assert info.value.message.startswith("invalid host ")
    assert "\x00" not in info.value.message


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=200)
def test_ipv4_parser_matches_inet_aton_on_integers(number: int) -> None:
    for spelling in (str(number), hex(number), f"0{number:o}"):
        assert parse_ipv4(spelling) == IPv4Address(number)


@given(st.text(alphabet="0123456789xXabcdefABCDEFgG.", min_size=1, max_size=20))
@settings(max_examples=500)
def test_ipv4_parser_agrees_with_inet_aton(text: str) -> None:
    try:
        expected: IPv4Address | None = IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert parse_ipv4(text) == expected


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=200)
def test_every_spelling_canonicalises_to_the_same_address(number: int) -> None:
    hosts = {canonical_host(s) for s in ipv4_spellings(number)}
    assert hosts == {CanonicalHost(str(IPv4Address(number)), IPv4Address(number))}


HOSTS = st.one_of(
    st.integers(0, 2**32 - 1).flatmap(lambda n: st.sampled_from(ipv4_spellings(n))),
    st.integers(0, 2**128 - 1).map(lambda n: str(IPv6Address(n)).upper()),
    st.from_regex(r"[A-Za-z0-9_]{1,10}(\.[A-Za-z0-9-]{1,10}){0,4}\.?", fullmatch=True),
    st.text(min_size=1, max_size=30),
)


@given(HOSTS)
@settings(max_examples=200, deadline=None)
def test_canonicalisation_is_idempotent(text: str) -> None:
    try:
        once = canonical_host(text)
    except RequestError:
        return
    assert canonical_host(once.text) == once


@pytest.mark.parametrize(
    ("text", "expected"), [("1", 1), ("25", 25), ("8080", 8080), ("65535", 65535)]
)
def test_ports_plain_decimal(text: str, expected: int) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "0x19",
        "031",
        "+25",
        " 25",
        "25 ",
        "25\n",
        "-25",
        "",
        "0",
        "65536",
        "99999",
        "1e3",
        "\uff12\uff15",
        "2_5",
        "http",
        "0025",
    ],
)
def test_ports_refused_with_the_plugin_message(text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_port(text)
    assert info.value.message == f"permission denied: non numeric port {text}"


def test_port_zero_only_when_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    with pytest.raises(RequestError):
        parse_port("00", allow_zero=True)


def test_service_names_only_when_allowed() -> None:
    assert parse_port("http", services=True) == "http"
    assert parse_port("25", services=True) == 25
    for bad in ("-http", "ht tp", "0x19", "http\x00"):
        with pytest.raises(RequestError, match="non numeric port"):
            parse_port(bad, services=True)


def test_mapped_cidr_becomes_ipv4() -> None:
    assert network_keys("::ffff:10.0.0.0/104") == network_keys("10.0.0.0/8")
    with pytest.raises(ValueError, match="host bits"):
        network_keys("10.0.0.1/8")


# ---------------------------------------------------------------- origins


def test_origin_canonical_parts() -> None:
    o = Origin.parse("HTTP://User:pw@WWW.Example.COM./apps/x/../t.tcl?q=1#frag")
    assert o.known
    assert o.url == "http://www.example.com:80/apps/t.tcl?q=1"
    assert o.home_dir_url == "http://www.example.com:80/apps/"
    assert (o.proto, o.host, o.socket_host, o.port, o.key) == (
        "http",
        "www.example.com",
        "www.example.com",
        "80",
        "frag",
    )


@pytest.mark.parametrize(
    ("url", "socket_host", "port"),
    [
        ("https://h.example/", "h.example", "443"),
        ("ftp://h.example/", "h.example", "21"),
        ("http://LOCALHOST.:8080/", "localhost", "8080"),
        ("http://0x7f000001/", "127.0.0.1", "80"),
        ("http://[::FFFF:127.0.0.1]:81/", "127.0.0.1", "81"),
        ("http://[::1]/", "::1", "80"),
        ("file:///home/me/t.tcl", "localhost", ""),
        ("file://localhost/home/me/t.tcl", "localhost", ""),
    ],
)
def test_origin_socket_host_and_port(url: str, socket_host: str, port: str) -> None:
    o = Origin.parse(url)
    assert (o.known, o.socket_host, o.port) == (True, socket_host, port)


def test_file_origin() -> None:
    o = Origin.parse("file:///home/me/t.tcl")
    assert (o.url, o.home_dir_url, o.host) == ("file:///home/me/t.tcl", "file:///home/me/", "")


def test_origin_escaped_dot_segments_are_removed() -> None:
    o = Origin.parse("http://h.example/ok/%2e%2E/evil/t.tcl")
    assert o.url == "http://h.example:80/evil/t.tcl"


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "not a url",
        "t.tcl",
        "javascript:alert(1)",
        "http:///x",
        "http://h x/",
        "http://h.example:0/",
        "http://h.example:99999/",
        "http://-h.example/",
        "http://h.example/\x00",
        "file:t.tcl",
        "http://[::1/",
        42,
    ],
)
def test_unparseable_origins_are_unknown(url: object) -> None:
    o = Origin.parse(url)  # type: ignore[arg-type]
    assert not o.known
    assert o.socket_host == "UNKNOWN originSocketHost"
    assert o.url == "UNKNOWN originURL"
