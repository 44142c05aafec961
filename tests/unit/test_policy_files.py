"""Policy and master files: strict loading with file, key path and line; the master config;
lint (tcletd.policy.files, tcletd.cli.policytool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcletd.cli.policytool import lint_file
from tcletd.policy import Origin, known_policies, load_policy, policy_dir
from tcletd.policy.files import UnreadableError, locate_lines
from tcletd.policy.master import MasterConfig, load_master
from tcletd.policy.quantities import parse_limit_override
from tcletd.shared.errors import ConfigError, UnknownPolicyError

GOOD = """\
description = "test"

[connect]
allow = [
    "www.example.org 80",
    "10.0.0.0/8 >1024",
]
disallow = ["* 25"]
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_file_loads_with_rule_lines(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    p = load_policy(str(path))
    assert p.name == "p"
    labels = [r.label for r in p.rules_for("connect")]
    assert labels == [
        f"{path}:5: allow www.example.org 80",
        f"{path}:6: allow 10.0.0.0/8 >1024",
        f"{path}:8: disallow * 25",
    ]


BAD = [
    ("frobnicate = 1\n", "frobnicate", 1, "unknown key"),
    ("[connect]\nallowed = []\n", "connect.allowed", 2, "unknown key"),
    ('[connect]\nallow = "* *"\n', "connect.allow", 2, "expected array"),
    ('[connect]\nallow = [\n  "* *",\n  3,\n]\n', "connect.allow[1]", 4, "expected str"),
    ('[connect]\nallow = [\n  "* *",\n  "a b c",\n]\n', "connect.allow[1]", 4, "HOSTWORD"),
    ('[connect]\nallow = [\n  "* *",\n  "*",\n]\n', "connect.allow[1]", 4, "HOSTWORD"),
    ('[connect]\nallow = ["* *",\n "* >65535"]\n', "connect.allow[1].port", 3, "never match"),
    ('[listen]\nallow = [\n"* 5-3"]\n', "listen.allow[0].port", 3, "never match"),
    ('[accept]\ndisallow = ["* 0x19"]\n', "accept.disallow[0].port", 2, "plain decimal"),
    ('[accept]\ndisallow = ["* 031"]\n', "accept.disallow[0].port", 2, "plain decimal"),
    ('[connect]\nallow = ["* 70000"]\n', "connect.allow[0].port", 2, "0..65535"),
    ('[connect]\nallow = ["* <0"]\n', "connect.allow[0].port", 2, "never match"),
    ('[connect]\nallow = ["10.0.0.1/8 *"]\n', "connect.allow[0].host", 2, "host bits"),
    ('[connect]\nallow = ["10.0.0.0/33 *"]\n', "connect.allow[0].host", 2, "CIDR"),
    ('[connect]\nallow = ["-evil *"]\n', "connect.allow[0].host", 2, "starts with -"),
    ('[connect]\nallow = ["ex$ample *"]\n', "connect.allow[0].host", 2, "origin variable"),
    ('[connect]\nallow = ["a..b *"]\n', "connect.allow[0].host", 2, "host word"),
    ('[connect]\nallow = ["*.ex%mple.com *"]\n', "connect.allow[0].host", 2, "glob"),
    ('[connect]\nallow = ["$originURL *"]\n', "connect.allow[0].host", 2, "expands to"),
    ('[quotas]\nbytes_sent = "64 MB/s"\n', "quotas.bytes_sent", 2, "size"),
    ("[quotas]\nsockets = true\n", "quotas.sockets", 2, "whole number"),
    ("[quotas]\nsockets = -1\n", "quotas.sockets", 2, "at least"),
    ('[quotas]\nsend_rate = "fast"\n', "quotas.send_rate", 2, "rate"),
    ('\n[limits]\n\ngpu = "1s"\n', "limits.gpu", 4, "unknown key"),
    ('[limits]\ncpu = "10 parsecs"\n', "limits.cpu", 2, "duration"),
    ("[limits]\nmemory = 0\n", "limits.memory", 2, "at least"),
    ('hidden_options = ["peername"]\n', "hidden_options[0]", 1, "option name"),
    ('service_names = "yes"\n', "service_names", 1, "expected bool"),
]


@pytest.mark.parametrize(("text", "key", "line", "what"), BAD)
def test_bad_policy_names_file_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, what: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    err = info.value
    assert (err.file, err.key, err.line) == (str(path), key, line)
    assert what in err.message
    assert str(err).startswith(f"{path}:{line}: {key}: ")


def test_malformed_policy_never_loads_in_part(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"* 25"', '"* 25", "* 5-3"'))
    with pytest.raises(ConfigError):
        load_policy(path)


def test_unreadable_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(UnknownPolicyError) as info:
        load_policy("nosuch")
    assert "home, inside, outside, trusted" in str(info.value)
    with pytest.raises(UnknownPolicyError):
        load_policy("master")
    with pytest.raises(UnreadableError, match="cannot read"):
        load_policy(tmp_path / "missing.toml")
    path = write(tmp_path, "[connect\nallow = []\n")
    with pytest.raises(UnreadableError, match="not valid TOML") as err:
        load_policy(path)
    assert err.value.line == 1


def test_reloads_a_changed_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[connect]\nallow = ["* 80"]\n')
    assert load_policy(path).rules_for("connect")[0].label.endswith("allow * 80")
    path.write_text('[connect]\nallow = ["* 8080"]\n# changed size\n')
    assert load_policy(path).rules_for("connect")[0].label.endswith("allow * 8080")


def test_shipped_policies() -> None:
    assert known_policies() == ("home", "inside", "outside", "trusted")
    assert (policy_dir() / "master.toml").is_file()
    for name in known_policies():
        p = load_policy(name)
        assert p.quotas.sockets > 0 and p.limits.cpu > 0


def test_locate_lines_follows_tables_arrays_and_strings() -> None:
    text = (
        'a = 1\n"b".c = [ [1, 2], "x" ,\n  """m\nn""",  # c\n 3.5 ]\n[t . u]\n'
        'd = {x = 1, y = [1, 2]}\ne = 1979-05-27 07:32:00\n[[g]]\nh = 1\n[[ g ]]\nh = [\n "q",\n]\n'
    )
    lines = locate_lines(text)
    assert lines["a"] == 1
    assert (lines["b.c"], lines["b.c[1]"], lines["b.c[2]"], lines["b.c[3]"]) == (2, 2, 3, 5)
    assert (lines["t.u"], lines["t.u.d"], lines["t.u.e"]) == (6, 7, 8)
    assert (lines["g[0]"], lines["g[0].h"], lines["g[1]"], lines["g[1].h[0]"]) == (9, 10, 11, 13)


def test_parse_limit_override_function() -> None:
    quotas, limits = parse_limit_override("cpu=5s")
    assert limits.cpu == 5.0 and quotas.sockets == 8
    quotas2, _ = parse_limit_override("bytes_sent=1.5GB", quotas, limits)
    assert quotas2.bytes_sent == 1_500_000_000 and quotas.bytes_sent == 64 * 2**20
    with pytest.raises(ConfigError) as info:
        parse_limit_override("wall=soon")
    assert info.value.key == "limits.wall" and "duration" in info.value.message


# ---------------------------------------------------------------- master config


def test_shipped_master_grants_home_only() -> None:
    master = load_master()
    assert isinstance(master, MasterConfig)
    for url in ("http://any.example/t.tcl", "file:///x/t.tcl", None, "garbage"):
        origin = Origin.parse(url)
        assert master.allows("home", origin)
        for other in ("trusted", "inside", "outside", "javascript"):
            assert not master.allows(other, origin)
    check = master.check("home", Origin.parse("http://a.example/"))
    assert check.allowed and check.rule.endswith("master.toml:8: grant home")


MASTER = """\
[[grant]]
policy = "home"
origins = ["*"]

[[grant]]
policy = "trusted"
origins = ["https://tools.example.com:443/tclets/*", "UNKNOWN"]

[[deny]]
policy = "*"
origins = ["https://tools.example.com:443/tclets/bad/*"]
"""


def test_master_globs_on_canonical_origin_and_deny_wins(tmp_path: Path) -> None:
    master = load_master(write(tmp_path, MASTER, "master.toml"))
    good = Origin.parse("HTTPS://Tools.Example.COM/tclets/a.tcl")
    assert master.allows("trusted", good)
    assert not master.allows("trusted", Origin.parse("https://tools.example.com/other/a.tcl"))
    assert not master.allows("trusted", Origin.parse("https://tools.example.com/tclets/../x.tcl"))
    bad = Origin.parse("https://tools.example.com/tclets/bad/a.tcl")
    decision = master.check("home", bad)
    assert not decision.allowed and decision.rule.endswith("master.toml:9: deny *")
    assert master.allows("trusted", Origin.parse(None))
    assert not master.allows("home", Origin.parse(None))  # "*" never matches UNKNOWN


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        (
            '[[grant]]\npolicy = "home"\norigins = ["http://h.example/*"]\n',
            "grant[0].origins[0]",
            3,
        ),
        ('[[grant]]\npolicy = "home"\n', "grant[0]", 1),
        ('[[grant]]\npolicy = "ho me"\norigins = []\n', "grant[0].policy", 2),
        ('[[grant]]\npolicy = "home"\norigins = ["*"]\nextra = 1\n', "grant[0].extra", 4),
        ('[[allow]]\npolicy = "home"\n', "allow", 1),
    ],
)
def test_bad_master(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = write(tmp_path, text, "master.toml")
    with pytest.raises(ConfigError) as info:
        load_master(path)
    assert (info.value.file, info.value.key, info.value.line) == (str(path), key, line)


# ---------------------------------------------------------------- lint


def test_shipped_files_lint_without_errors() -> None:
    for path in sorted(policy_dir().glob("*.toml")):
        problems = lint_file(path)
        assert [p for p in problems if p.severity == "error"] == [], path
        if path.stem in ("inside", "outside"):
            assert [p.message for p in problems] == [
                "no allow rule: every connect is denied (a locked policy)"
            ]
        else:
            assert problems == [], path


def test_lint_collects_every_bad_word(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[connect]\nallow = [\n  "* >65535",\n  "* 5-3",\n  "10.0.0.1/8 *",\n  "* 80",\n]\n',
    )
    problems = lint_file(path)
    assert [(p.severity, p.key, p.line) for p in problems] == [
        ("error", "connect.allow[0].port", 3),
        ("error", "connect.allow[1].port", 4),
        ("error", "connect.allow[2].host", 5),
    ]
    assert str(problems[0]).startswith(f"{path}:3: error: connect.allow[0].port: ")


def test_lint_warnings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'hidden_options = ["-peername", "-bogus"]\n'
        '[connect]\nallow = [\n  "* 25",\n  "192.168.* *",\n  "* 0",\n]\n'
        'disallow = ["* 20-30", "loopback *"]\n',
    )
    messages = [(p.severity, p.key, p.message) for p in lint_file(path)]
    assert ("warning", "hidden_options[1]", "-bogus is not a Tcl socket option") in messages
    assert any(k == "connect.allow[0]" and "never has effect" in m for _, k, m in messages)
    assert any(k == "connect.allow[1]" and "use a CIDR" in m for _, k, m in messages)
    assert any(k == "connect.allow[2]" and "port 0" in m for _, k, m in messages)
    assert any("add unspecified" in m for _, _, m in messages)
    assert len(messages) == 5
    assert all(s == "warning" for s, _, _ in messages)


def test_lint_master(tmp_path: Path) -> None:
    path = write(tmp_path, '[[grant]]\npolicy = "homme"\norigins = ["*"]\n', "master.toml")
    problems = lint_file(path)
    assert [p.severity for p in problems] == ["warning"]
    assert "no shipped policy named homme" in problems[0].message
