"""The policy decision (tcletd.policy): rule words, the decision rule, origin variables and the
shipped policies deciding as the Tcl plugin did."""

from __future__ import annotations

import random
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.addresses import ipv4_spellings

from tcletd.policy import (
    Action,
    Decision,
    Origin,
    Policy,
    denied_message,
    load_policy,
    policy_from_text,
)
from tcletd.policy.addresses import CanonicalHost, IPAddress, canonical_host
from tcletd.policy.quantities import UNLIMITED, Limits, Quotas
from tcletd.shared.errors import ConfigError

ORIGIN = Origin.parse("http://www.example.com:8080/apps/t.tcl")
NO_ORIGIN = Origin.parse(None)


def policy(
    connect: Sequence[str] = (), disallow: Sequence[str] = (), action: str = "connect"
) -> Policy:
    allow_lines = "".join(f'    "{r}",\n' for r in connect)
    disallow_lines = "".join(f'    "{r}",\n' for r in disallow)
    return policy_from_text(
        f"[{action}]\nallow = [\n{allow_lines}]\ndisallow = [\n{disallow_lines}]\n"
    )


def decide(
    p: Policy,
    host: str,
    port: int,
    addresses: Sequence[str] | None = None,
    origin: Origin = ORIGIN,
    action: str = "connect",
) -> Decision:
    h = canonical_host(host)
    addrs: list[IPAddress] | None = None
    if addresses is not None:
        addrs = [ip_address(a) for a in addresses]
    return p.decide(action, h, port, origin, addrs)


# ---------------------------------------------------------------- host words


def test_exact_name_matches_every_spelling_of_the_name_only() -> None:
    p = policy(["www.example.org 80"])
    assert decide(p, "www.example.org", 80, ["192.0.2.1"]).allowed
    assert decide(p, "WWW.Example.ORG.", 80, ["192.0.2.1"]).allowed
    assert not decide(p, "example.org", 80, ["192.0.2.1"]).allowed
    # A name rule matches the name, never an address (docs/policy.md "Names and addresses").
    assert not decide(p, "192.0.2.1", 80).allowed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("a.example.com", True),
        ("a.b.example.com", True),
        ("A.EXAMPLE.COM.", True),
        ("example.com", False),
        ("evilexample.com", False),
        ("a.example.com.evil.org", False),
    ],
)
def test_glob_on_canonical_names(host: str, allowed: bool) -> None:
    p = policy(["*.example.com 443"])
    assert decide(p, host, 443, ["192.0.2.7"]).allowed is allowed


def test_glob_never_matches_an_address() -> None:
    p = policy(["192.168.* *"])
    assert not decide(p, "192.168.1.1", 80).allowed


@pytest.mark.parametrize(
    ("word", "inside", "outside"),
    [
        ("10.0.0.0/8", "0x0a010203", "11.0.0.1"),
        ("fd00::/8", "fd12::1", "fe80::1"),
        ("192.0.2.1", "3221225985", "192.0.2.2"),
        ("::1", "[0:0::1]", "::2"),
        ("loopback", "127.1", "128.0.0.1"),
        ("loopback", "::1", "::2"),
        ("private", "10.255.255.255", "11.0.0.0"),
        ("private", "172.31.0.1", "172.32.0.1"),
        ("private", "192.168.7.7", "192.169.0.1"),
        ("private", "100.64.0.1", "100.128.0.1"),
        ("private", "fd00::1", "fe00::1"),
        ("link-local", "169.254.1.1", "169.255.0.1"),
        ("link-local", "fe80::1", "fec0::1"),
        ("multicast", "224.0.0.1", "223.255.255.255"),
        ("multicast", "ff02::1", "fe02::1"),
        ("unspecified", "0.0.0.0", "0.0.0.1"),
        ("unspecified", "::", "::1"),
        ("metadata", "169.254.169.254", "169.254.169.253"),
        ("metadata", "fd00:ec2::254", "fd00:ec2::253"),
        ("Loopback", "::ffff:127.0.0.1", "::ffff:126.0.0.1"),
    ],
)
def test_address_words(word: str, inside: str, outside: str) -> None:
    p = policy([f"{word} *"])
    assert decide(p, inside, 80).allowed
    assert not decide(p, outside, 80).allowed
    # The same word as a disallow rule holds against an allow-all rule.
    q = policy(["* *"], [f"{word} *"])
    assert not decide(q, inside, 80).allowed
    assert decide(q, outside, 80).allowed


def test_star_matches_names_and_addresses() -> None:
    p = policy(["* *"])
    assert decide(p, "anything.example", 1, ["203.0.113.9"]).allowed
    assert decide(p, "203.0.113.9", 65535).allowed


@pytest.mark.parametrize(
    ("word", "yes", "no"),
    [
        ("25", [25], [24, 26]),
        ("1000-2000", [1000, 1500, 2000], [999, 2001]),
        (">1024", [1025, 65535], [1024, 1]),
        ("<1025", [1, 1024], [1025]),
        ("*", [1, 80, 65535], []),
        ("65535", [65535], [65534]),
    ],
)
def test_port_words(word: str, yes: list[int], no: list[int]) -> None:
    p = policy([f"* {word}"])
    for port in yes:
        assert decide(p, "192.0.2.1", port).allowed, port
    for port in no:
        assert not decide(p, "192.0.2.1", port).allowed, port


# ---------------------------------------------------------------- the decision rule


def test_no_allow_rule_denies() -> None:
    d = decide(policy([], ["* 25"]), "192.0.2.1", 80)
    assert not d.allowed
    assert d.reason == "the policy has no allow rule for connect"
    assert d.usable == ()


def test_disallow_wins_over_allow() -> None:
    p = policy(["* *", "www.example.org 25"], ["* 25"])
    d = decide(p, "www.example.org", 25, ["192.0.2.1"])
    assert not d.allowed
    assert d.rules == ("<policy>:7: disallow * 25",)
    assert decide(p, "www.example.org", 26, ["192.0.2.1"]).allowed


def test_disallow_on_any_resolved_address_denies_the_whole_request() -> None:
    p = policy(["*.example.com *"], ["loopback *"])
    d = decide(p, "rebind.example.com", 80, ["203.0.113.1", "127.0.0.1"])
    assert not d.allowed
    assert d.usable == ()
    assert d.checked == (IPv4Address("203.0.113.1"), IPv4Address("127.0.0.1"))


def test_mapped_resolved_address_is_unwrapped_before_matching() -> None:
    p = policy(["* *"], ["10.0.0.0/8 *"])
    d = decide(p, "x.example.com", 80, ["::ffff:10.1.1.1"])
    assert not d.allowed
    assert d.checked == (IPv4Address("10.1.1.1"),)


def test_only_allowed_addresses_are_usable_in_resolver_order() -> None:
    p = policy(["10.0.0.0/8 *", "fd00::/8 *"])
    d = decide(p, "svc.example.com", 80, ["fd00::2", "192.0.2.1", "10.0.0.2", "10.0.0.2"])
    assert d.allowed
    assert d.checked == (IPv6Address("fd00::2"), IPv4Address("192.0.2.1"), IPv4Address("10.0.0.2"))
    assert d.usable == (IPv6Address("fd00::2"), IPv4Address("10.0.0.2"))
    assert d.rules == ("<policy>:3: allow 10.0.0.0/8 *", "<policy>:4: allow fd00::/8 *")


def test_name_rule_makes_every_checked_address_usable() -> None:
    d = decide(policy(["svc.example.com 80"]), "svc.example.com", 80, ["192.0.2.1", "::1"])
    assert d.usable == d.checked == (IPv4Address("192.0.2.1"), IPv6Address("::1"))


def test_unresolved_name_is_allowed_with_nothing_usable() -> None:
    d = decide(policy(["svc.example.com 80"]), "svc.example.com", 80, [])
    assert d.allowed
    assert d.usable == d.checked == ()


def test_literal_is_its_own_address() -> None:
    p = policy(["10.0.0.0/8 *"])
    assert decide(p, "10.0.0.1", 80).usable == (IPv4Address("10.0.0.1"),)
    assert decide(p, "10.0.0.1", 80, ["10.0.0.1"]).allowed
    with pytest.raises(ValueError, match="not the literal"):
        decide(p, "10.0.0.1", 80, ["10.0.0.2"])


def test_port_zero_only_for_listen() -> None:
    assert not decide(policy(["* *"]), "192.0.2.1", 0).allowed
    listen = policy(["* *"], action="listen")
    assert decide(listen, "0.0.0.0", 0, action="listen").allowed
    assert not decide(policy(["* >1024"], action="listen"), "0.0.0.0", 0, action="listen").allowed


def test_actions_are_separate_and_enum_or_string() -> None:
    p = policy(["* *"], action="accept")
    h = canonical_host("192.0.2.9")
    assert p.decide(Action.ACCEPT, h, 5555, ORIGIN).allowed
    assert p.decide("accept", h, 5555, ORIGIN).allowed
    assert not p.decide(Action.CONNECT, h, 5555, ORIGIN).allowed
    assert not p.decide("listen", h, 5555, ORIGIN).allowed
    with pytest.raises(ValueError, match="unknown action"):
        p.decide("resolve", h, 5555, ORIGIN)


def test_denied_message() -> None:
    assert denied_message("0x7f.1", "031") == "permission denied for host 0x7f.1 port 031"


RULE_POOL = [
    "* >1024",
    "* 80",
    "*.example.com 443",
    "10.0.0.0/8 *",
    "loopback *",
    "private 22",
    "www.example.org 1-100",
    "fd00::/8 <1025",
    "metadata *",
    "192.0.2.1 25",
]
REQUESTS = [
    ("www.example.com", 443, ["10.0.0.1", "192.0.2.1"]),
    ("www.example.org", 25, ["192.0.2.1"]),
    ("127.0.0.1", 8080, None),
    ("169.254.169.254", 80, None),
    ("10.9.9.9", 22, None),
    ("fd00::1", 1024, None),
    ("svc.example.net", 2000, ["fd00::1", "127.0.0.1"]),
    ("192.0.2.1", 25, None),
]


def _rules_toml(allow: list[str], disallow: list[str]) -> str:
    return f"[connect]\nallow = {allow!r}\ndisallow = {disallow!r}\n".replace("'", '"')


@given(
    st.lists(st.sampled_from(RULE_POOL), max_size=6, unique=True),
    st.lists(st.sampled_from(RULE_POOL), max_size=4, unique=True),
    st.randoms(use_true_random=False),
)
@settings(max_examples=60, deadline=None)
def test_decision_does_not_depend_on_rule_order(
    allow: list[str], disallow: list[str], rnd: random.Random
) -> None:
    first = policy_from_text(_rules_toml(allow, disallow))
    allow2, disallow2 = allow[:], disallow[:]
    rnd.shuffle(allow2)
    rnd.shuffle(disallow2)
    second = policy_from_text(_rules_toml(allow2, disallow2))
    for host, port, addrs in REQUESTS:
        a, b = decide(first, host, port, addrs), decide(second, host, port, addrs)
        assert (a.allowed, a.usable, sorted(r.split(": ", 1)[1] for r in a.rules)) == (
            b.allowed,
            b.usable,
            sorted(r.split(": ", 1)[1] for r in b.rules),
        )
        # The plugin's rule, computed independently: some allow matches and no disallow does.
        assert a.allowed == (
            bool(a.usable) and not any(r.split(": ")[1].startswith("disallow") for r in a.rules)
        )


ADDRESS = st.integers(0, 2**32 - 1)


@given(ADDRESS, st.integers(0, 32))
@settings(max_examples=150, deadline=None)
def test_any_spelling_of_a_disallowed_address_is_denied(number: int, prefix: int) -> None:
    net = IPv4Network((number, prefix), strict=False)
    p = policy(["* *"], [f"{net} *", f"{IPv4Address(number)} *"])
    for spelling in ipv4_spellings(number):
        assert not decide(p, spelling, 80).allowed, spelling


@given(ADDRESS, st.integers(0, 32), ADDRESS)
@settings(max_examples=200, deadline=None)
def test_cidr_matching_agrees_with_ipaddress(network: int, prefix: int, number: int) -> None:
    net = IPv4Network((network, prefix), strict=False)
    p = policy([f"{net} *"])
    assert decide(p, str(IPv4Address(number)), 80).allowed is (IPv4Address(number) in net)


@given(
    st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 65535)), min_size=1, max_size=4),
    st.integers(1, 65535),
)
@settings(max_examples=150, deadline=None)
def test_port_outside_every_allow_range_is_denied(ranges: list[tuple[int, int]], port: int) -> None:
    ranges = [(min(a, b), max(a, b)) for a, b in ranges]
    p = policy([f"* {lo}-{hi}" for lo, hi in ranges])
    inside = any(lo <= port <= hi for lo, hi in ranges)
    assert decide(p, "192.0.2.1", port).allowed is inside


# ---------------------------------------------------------------- origin variables


def test_origin_socket_host_name_origin() -> None:
    p = policy(["$originSocketHost >1024"])
    assert decide(p, "WWW.EXAMPLE.COM.", 8080, ["192.0.2.1"]).allowed
    assert not decide(p, "other.example.com", 8080, ["192.0.2.1"]).allowed
    # A name rule never matches an address, not even the origin name's own address.
    assert not decide(p, "192.0.2.1", 8080).allowed


def test_origin_socket_host_address_origin_matches_every_spelling_and_resolution() -> None:
    p = policy(["$originSocketHost >1024"])
    origin = Origin.parse("http://127.0.0.1:8080/t.tcl")
    for spelling in ("127.0.0.1", "2130706433", "0x7f.1", "::ffff:127.0.0.1"):
        assert decide(p, spelling, 8080, origin=origin).allowed
    assert decide(p, "localhost", 8080, ["127.0.0.1"], origin=origin).allowed
    assert not decide(p, "localhost", 8080, ["127.0.0.2"], origin=origin).allowed


def test_origin_spelling_collapses() -> None:
    p = policy(["$originSocketHost 8080"])
    origin = Origin.parse("http://LOCALHOST.:8080/")
    assert decide(p, "localhost", 8080, ["127.0.0.1"], origin=origin).allowed


def test_other_origin_variables() -> None:
    p = policy(["*.$originHost $originPort"])
    assert decide(p, "api.www.example.com", 8080, ["192.0.2.1"]).allowed
    assert not decide(p, "api.www.example.com", 8081, ["192.0.2.1"]).allowed
    braces = policy(["${originSocketHost} *"])
    assert decide(braces, "www.example.com", 1, ["192.0.2.1"]).allowed


def test_file_origin_socket_host_is_localhost() -> None:
    p = policy(["$originSocketHost >1024"])
    origin = Origin.parse("file:///home/me/t.tcl")
    assert decide(p, "localhost", 5000, ["127.0.0.1"], origin=origin).allowed
    # $originPort is empty for file origins, so a rule using it cannot match.
    assert not decide(policy(["* $originPort"]), "localhost", 21, [], origin=origin).allowed


def test_unknown_origin_matches_no_rule_naming_origin_variables() -> None:
    allow = policy(["$originSocketHost *", "192.0.2.1 80"])
    d = decide(allow, "192.0.2.9", 80, origin=NO_ORIGIN)
    assert not d.allowed
    assert "origin unknown" in d.reason
    assert decide(allow, "192.0.2.1", 80, origin=NO_ORIGIN).allowed
    # The tclet cannot name the UNKNOWN placeholder to match it.
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do
        canonical_host("UNKNOWN originSocketHost")


def test_origin_values_are_data_not_patterns() -> None:
    origin = Origin.parse("http://h.example/*?[x]")
    assert origin.known
    p = policy(["$originSocketHost *"])
    assert not decide(p, "other.example", 80, ["192.0.2.1"], origin=origin).allowed


def test_per_origin_compilation_is_cached_and_correct() -> None:
    p = policy(["$originSocketHost *"])
    for i in range(1100):  # more origins than the cache holds
        origin = Origin.parse(f"http://h{i}.example/")
        assert decide(p, f"h{i}.example", 80, [], origin=origin).allowed
        assert not decide(p, f"h{i + 1}.example", 80, [], origin=origin).allowed


@pytest.mark.parametrize("word", ["$originFoo", "$", "$originHostname", "$originURL"])
def test_bad_origin_variable_use_fails_to_load(word: str) -> None:
    with pytest.raises(ConfigError, match=r"connect\.allow\[0\]\.host"):
        policy([f"{word} *"])


# ---------------------------------------------------------------- shipped policies


def test_home_decides_as_the_plugin() -> None:
    home = load_policy("home")
    origin = Origin.parse("http://tclets.example.com/t.tcl")
    addr = ["198.51.100.7"]
    assert decide(home, "tclets.example.com", 1025, addr, origin).allowed
    assert decide(home, "tclets.example.com", 65535, addr, origin).allowed
    assert decide(home, "tclets.example.com", 21, addr, origin).allowed
    for port in (22, 25, 80, 1024, 20):
        assert not decide(home, "tclets.example.com", port, addr, origin).allowed, port
    assert not decide(home, "other.example.com", 8080, addr, origin).allowed
    assert not decide(home, "198.51.100.7", 8080, None, origin).allowed
    assert not decide(home, "0.0.0.0", 8080, origin=origin, action="listen").allowed
    assert not decide(home, "198.51.100.7", 8080, origin=origin, action="accept").allowed
    # Not in the plugin: a rebinding of the origin's name to a metadata address is refused.
    assert not decide(home, "tclets.example.com", 8080, ["169.254.169.254"], origin).allowed
    assert home.hidden_options == ("-peername",)
    assert home.service_names is False
    d = decide(home, "tclets.example.com", 8080, addr, origin)
    assert d.rules[0].endswith("home.toml:11: allow $originSocketHost >1024")


def test_trusted_allows_everything() -> None:
    trusted = load_policy("trusted")
    assert decide(trusted, "169.254.169.254", 80, origin=NO_ORIGIN).allowed
    assert decide(trusted, "any.example", 25, ["192.0.2.1"]).allowed
    assert decide(trusted, "::", 0, action="listen").allowed
    assert decide(trusted, "192.0.2.1", 1, action="accept").allowed
    assert trusted.hidden_options == ()
    assert trusted.service_names is True
    assert trusted.quotas.sockets > load_policy("home").quotas.sockets


@pytest.mark.parametrize("name", ["inside", "outside"])
def test_inside_and_outside_ship_locked(name: str) -> None:
    p = load_policy(name)
    for host, addrs in (("10.0.0.1", None), ("www.example.org", ["93.184.216.34"])):
        for action in ("connect", "listen", "accept"):
            assert not decide(p, host, 8080, addrs, action=action).allowed


def test_outside_disallows_keep_holding_once_opened() -> None:
    path = load_policy("outside").path
    assert path is not None
    text = path.read_text()
    opened = policy_from_text(text.replace("allow = []", 'allow = ["* *"]', 1))
    assert decide(opened, "www.example.org", 443, ["93.184.216.34"]).allowed
    for bad in ("127.0.0.1", "0.0.0.0", "10.1.1.1", "169.254.169.254", "fe80::1", "::1"):
        assert not decide(opened, "rebind.example.org", 443, [bad]).allowed, bad
    assert not decide(opened, "www.example.org", 25, ["93.184.216.34"]).allowed


NETWORK_N = """
[connect]
allow = [
    "www.sun.com >1024",
    "*.cs.mysite.edu 1030",
]
disallow = [
    "*.cs.mysite.edu <1025",
]
"""


@pytest.mark.parametrize(
    ("host", "port", "allowed"),
    [
        ("www.sun.com", 1025, True),
        ("WWW.SUN.COM.", 8080, True),
        ("www.sun.com", 1024, False),
        ("www.sun.com", 80, False),
        ("ftp.cs.mysite.edu", 1030, True),
        ("ftp.cs.mysite.edu", 1031, False),
        ("ftp.cs.mysite.edu", 25, False),
        ("FTP.CS.MYSITE.EDU", 1030, True),
        ("cs.mysite.edu", 1030, False),
        ("www.mysite.edu", 1030, False),
    ],
)
def test_network_n_example(host: str, port: int, allowed: bool) -> None:
    p = policy_from_text(NETWORK_N)
    assert decide(p, host, port, ["192.0.2.1"]).allowed is allowed


# ---------------------------------------------------------------- quotas and limits


def test_shipped_budgets_are_typed() -> None:
    home = load_policy("home")
    # Output and wall are unlimited by default: output is a stream, a hosted tclet may serve on.
    assert home.quotas == Quotas(8, 5.0, 64 * 2**20, 64 * 2**20, 2**20, UNLIMITED)
    assert home.limits == Limits(10.0, 256 * 2**20, UNLIMITED, 50_000_000)


def test_units() -> None:
    p = policy_from_text(
        '[quotas]\nbytes_sent = "1.5GB"\nbytes_received = 1000\nsend_rate = "2KiB/s"\n'
        'output_bytes = "512 kB"\nconnects_per_second = 0.5\n'
        '[limits]\ncpu = "250ms"\nwall = "1.5m"\nmemory = "1GiB"\ncommands = "1000"\n'
    )
    assert (p.quotas.bytes_sent, p.quotas.bytes_received, p.quotas.send_rate) == (
        1_500_000_000,
        1000,
        2048,
    )
    assert (p.quotas.output_bytes, p.quotas.connects_per_second) == (512_000, 0.5)
    assert (p.limits.cpu, p.limits.wall, p.limits.memory, p.limits.commands) == (
        0.25,
        90.0,
        2**30,
        1000,
    )


def test_overrides_return_new_objects_and_name_the_key() -> None:
    home = load_policy("home")
    changed = home.with_overrides("cpu=5s", "quotas.sockets=2", "memory=64MiB")
    assert (changed.limits.cpu, changed.quotas.sockets, changed.limits.memory) == (5.0, 2, 2**26)
    assert home.limits.cpu == 10.0  # unchanged
    assert changed.decide(
        "connect", canonical_host("h.example"), 2000, Origin.parse("http://h.example/"), []
    ).allowed
    for bad, key in (
        ("cpu=fast", "limits.cpu"),
        ("sockets=-1", "quotas.sockets"),
        ("gpu=1", "gpu"),
        ("memory=0", "limits.memory"),
        ("cpu", "cpu"),
    ):
        with pytest.raises(ConfigError) as info:
            home.with_overrides(bad)
        assert info.value.key == key, bad


def test_policy_is_typed_as_the_host_expects() -> None:
    home = load_policy("home")
    assert home.name == "home"
    assert home.path is not None and home.path.name == "home.toml"
    assert load_policy("home") is home  # cached while the file is unchanged
    assert isinstance(canonical_host("x.example"), CanonicalHost)
