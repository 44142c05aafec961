"""``tcletd policy check`` and ``tcletd policy lint``: output and exit statuses, run as a user
would (a subprocess of ``python -m tcletd``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support import POLICIES
from support.processes import Ran, run_tcletd

HOME_ORIGIN = ["--policy", "home", "--origin", "http://127.0.0.1:8080/t.tcl"]


def tcletd(*args: str) -> Ran:
    return run_tcletd(args, timeout=30)


def test_check_allowed_prints_the_deciding_rule() -> None:
    r = tcletd("policy", "check", *HOME_ORIGIN, "127.0.0.1", "8080")
    assert r.status == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ALLOWED"
    assert "  host:    127.0.0.1 (address)" in lines
    assert "  checked: 127.0.0.1" in lines
    assert any(line.endswith("home.toml:11: allow $originSocketHost >1024") for line in lines)


def test_check_denied_for_another_spelling_and_port() -> None:
    r = tcletd("policy", "check", *HOME_ORIGIN, "2130706433", "25")
    assert r.status == 1
    assert r.stdout.splitlines()[0] == "DENIED"
    assert "  host:    127.0.0.1 (address)" in r.stdout
    assert "  message: permission denied for host 2130706433 port 25" in r.stdout


@pytest.mark.parametrize("port", ["0x19", "031", "+25", "http"])
def test_check_bad_port_spelling_is_denied_with_the_plugin_message(port: str) -> None:
    r = tcletd("policy", "check", *HOME_ORIGIN, "127.0.0.1", port)
    assert r.status == 1
    assert r.stdout.splitlines()[0] == "DENIED"
    assert f"  message: permission denied: non numeric port {port}" in r.stdout


def test_check_resolves_names_and_lists_the_addresses() -> None:
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", None)}
    r = tcletd(
        "policy",
        "check",
        "--policy",
        "home",
        "--origin",
        "http://localhost:8080/",
        "LOCALHOST.",
        "8080",
    )
    assert r.status == 0, r.stdout
    checked = next(line for line in r.stdout.splitlines() if "checked:" in line)
    assert set(checked.split()[1:]) == expected


def test_check_without_origin_denies_home() -> None:
    r = tcletd("policy", "check", "--policy", "home", "127.0.0.1", "8080")
    assert r.status == 1
    assert "origin unknown" in r.stdout


def test_check_service_names_and_listen_port_zero_under_trusted() -> None:
    r = tcletd("policy", "check", "--policy", "trusted", "192.0.2.1", "http")
    assert r.status == 0
    assert "request: connect 192.0.2.1 http" in r.stdout
    r = tcletd("policy", "check", "--policy", "trusted", "--action", "listen", "", "0")
    assert r.status == 0
    assert "  host:    0.0.0.0 (address)" in r.stdout


def test_check_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[accept]\nallow = ["10.0.0.0/8 *"]\n')
    assert (
        tcletd(
            "policy", "check", "--policy", str(path), "--action", "accept", "10.1.2.3", "40000"
        ).status
        == 0
    )
    assert (
        tcletd(
            "policy", "check", "--policy", str(path), "--action", "accept", "11.1.2.3", "40000"
        ).status
        == 1
    )


def test_check_bad_policy_or_argument_exits_2(tmp_path: Path) -> None:
    r = tcletd("policy", "check", "--policy", "nosuch", "127.0.0.1", "80")
    assert r.status == 2
    assert "known policies: home, inside, outside, trusted" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[connect]\nallow = [\n  "* 5-3",\n]\n')
    r = tcletd("policy", "check", "--policy", str(bad), "127.0.0.1", "80")
    assert r.status == 2
    assert f"{bad}:3: connect.allow[0].port: " in r.stderr
    r = tcletd("policy", "check", "--origin", "not a url", "127.0.0.1", "80")
    assert r.status == 2
    assert "--origin" in r.stderr


def test_lint_exit_statuses(tmp_path: Path) -> None:
    home = POLICIES / "home.toml"
    r = tcletd("policy", "lint", str(home))
    assert (r.status, r.stdout.splitlines()[-1]) == (0, f"{home}: 0 error(s), 0 warning(s)")
    inside = home.with_name("inside.toml")
    r = tcletd("policy", "lint", str(inside))
    assert r.status == 0 and "warning" in r.stdout  # locked is a warning, not an error
    bad = tmp_path / "bad.toml"
    bad.write_text('[connect]\nallow = [\n  "* >65535",\n]\nbogus = 1\n')
    r = tcletd("policy", "lint", str(bad))
    assert r.status == 1
    assert "connect.bogus" in r.stdout
    bad.write_text('[connect]\nallow = [\n  "* >65535",\n]\n')
    r = tcletd("policy", "lint", str(bad))
    assert r.status == 1
    assert f"{bad}:3: error: connect.allow[0].port:" in r.stdout
    r = tcletd("policy", "lint", str(tmp_path / "missing.toml"))
    assert r.status == 2
    bad.write_text("[connect\n")
    r = tcletd("policy", "lint", str(bad))
    assert r.status == 2
    assert "not valid TOML" in r.stderr
