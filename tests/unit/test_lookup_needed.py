"""``Policy.needs_addresses``: a name is looked up only when some allow rule could match it.

Pure. The property that makes skipping the lookup safe: whenever ``needs_addresses`` is False,
``decide`` denies the request whatever addresses the name might resolve to.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from tcletd.policy import Origin, Policy, load_policy
from tcletd.policy.addresses import IPAddress, canonical_host
from tcletd.policy.files import build_policy_document

HOME_ORIGIN = Origin.parse("http://tclets.example:8080/t.tcl")
SAMPLES: list[IPAddress] = [
    ip_address(a)
    for a in ("127.0.0.1", "10.1.2.3", "192.0.2.7", "169.254.169.254", "::1", "2001:db8::5")
]


def _policy(connect: list[str], disallow: list[str] | None = None) -> Policy:
    doc = {"connect": {"allow": connect, "disallow": disallow or []}}
    return Policy(build_policy_document(doc, {}, "test.toml", "test", None))


def _needs(policy: Policy, host: str, port: int, action: str = "connect") -> bool:
    return policy.needs_addresses(action, canonical_host(host), port, HOME_ORIGIN)


def test_home_does_not_look_up_a_name_other_than_the_origins() -> None:
    home = load_policy("home")
    assert not _needs(home, "card-4111111111111111.exfil.example", 8080)
    assert _needs(home, "tclets.example", 8080)
    assert _needs(home, "TCLETS.EXAMPLE.", 21)
    assert not _needs(home, "tclets.example", 80)  # no allow rule covers port 80


def test_home_never_looks_up_for_listen() -> None:
    home = load_policy("home")
    assert not _needs(home, "chunk1.exfil.example", 0, "listen")
    assert not _needs(home, "tclets.example", 8080, "listen")


def test_address_rules_need_addresses_for_any_name_on_their_ports() -> None:
    assert _needs(load_policy("trusted"), "anything.example", 80)
    nets = _policy(["10.0.0.0/8 443", "loopback >1024"])
    assert _needs(nets, "anything.example", 443)
    assert _needs(nets, "anything.example", 5000)
    assert not _needs(nets, "anything.example", 80)


def test_globs_and_names_need_addresses_only_when_they_match() -> None:
    globs = _policy(["*.example.com 443", "exact.example.org *"])
    assert _needs(globs, "www.example.com", 443)
    assert not _needs(globs, "www.example.com", 80)
    assert not _needs(globs, "www.example.net", 443)
    assert _needs(globs, "exact.example.org", 1)
    assert not _needs(globs, "other.example.org", 1)


def test_a_name_disallowed_by_name_or_a_bad_port_needs_no_lookup() -> None:
    policy = _policy(["* *"], disallow=["*.evil.example *"])
    assert not _needs(policy, "x.evil.example", 80)
    assert _needs(policy, "x.good.example", 80)
    assert not _needs(policy, "x.good.example", 0)  # port 0 is no connect
    assert not _needs(policy, "x.good.example", 70000)


def test_literals_need_no_lookup() -> None:
    assert not _needs(load_policy("trusted"), "127.0.0.1", 80)
    assert not _needs(load_policy("trusted"), "[::1]", 80)


@pytest.mark.parametrize(
    ("rules", "disallow"),
    [
        (["$originSocketHost >1024", "$originSocketHost 21"], ["metadata *"]),
        (["*.example.com 443", "10.0.0.0/8 22"], []),
        (["* 80"], ["*.evil.example *"]),
        ([], []),
    ],
)
@pytest.mark.parametrize(
    "host", ["tclets.example", "www.example.com", "x.evil.example", "other.example"]
)
@pytest.mark.parametrize("port", [21, 22, 80, 443, 8080])
def test_no_lookup_means_denied_whatever_the_addresses(
    rules: list[str], disallow: list[str], host: str, port: int
) -> None:
    policy = _policy(rules, disallow)
    name = canonical_host(host)
    if policy.needs_addresses("connect", name, port, HOME_ORIGIN):
        return
    assert not policy.decide("connect", name, port, HOME_ORIGIN, []).allowed
    for n in range(1, len(SAMPLES) + 1):
        decision = policy.decide("connect", name, port, HOME_ORIGIN, SAMPLES[:n])
        assert not decision.allowed, (rules, host, port, SAMPLES[:n])


def test_hosts_file_localhost_names_keep_their_listed_families() -> None:
    from tcletd.host.resolver import _parse_hosts

    text = "127.0.0.1 localhost  # loopback\n::1 ip6-localhost\n127.0.1.1 box.localhost box\nbad\n"
    assert _parse_hosts(text) == {
        "localhost": [ip_address("127.0.0.1")],
        "box.localhost": [ip_address("127.0.1.1")],
    }
