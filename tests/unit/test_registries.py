"""The registries are the one place their items are declared: the policy actions and the quotas
and limits. Everything derived from them (docs tables, tables' fields, worker limits, the policy
schema, lint, the override parser) must follow them."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tcletd.cli.commands import build_parser
from tcletd.policy import ACTIONS, load_policy, policy_from_text
from tcletd.policy.actions import ORIGIN_HOST, action_spec
from tcletd.policy.addresses import Origin
from tcletd.policy.quantities import (
    SETTINGS,
    UNITS,
    UNLIMITED,
    Limits,
    Quotas,
    format_value,
    limit_help,
    names_of,
    parse_budget_value,
    parse_limit_override,
    worker_ceilings,
    worker_limits,
)
from tcletd.shared.errors import ConfigError, RequestError
from tcletd.shared.protocol import PolicyGranted, WorkerSpec

DOCS = Path(__file__).resolve().parents[2] / "docs" / "policy.md"


def _table(text: str, header: str) -> list[str]:
    """The rows of the markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_docs_quota_table_is_the_registry_written_out() -> None:
    trusted = load_policy("trusted")
    expected = [
        f"| `{s.table}.{s.name}` | {s.doc} | {format_value(s, s.default)} "
        f"| {format_value(s, getattr(getattr(trusted, s.table), s.name))} | {s.enforcer} |"
        for s in SETTINGS.values()
    ]
    actual = _table(DOCS.read_text(), "| key | type | home | trusted |")
    assert actual == expected, "docs/policy.md's quota table should read:\n" + "\n".join(expected)


def test_docs_section_table_is_the_action_registry() -> None:
    expected = [f"| `{a.name}` | {a.host_matched} | {a.port_matched} |" for a in ACTIONS.values()]
    actual = _table(DOCS.read_text(), "| section | host word")
    assert actual == expected, "docs/policy.md's section table should read:\n" + "\n".join(expected)


def test_tables_have_exactly_the_registry_settings_in_order() -> None:
    for cls, table in ((Quotas, "quotas"), (Limits, "limits")):
        values = cls()
        assert [k for k, _ in values.items()] == list(names_of(table))
        for name, value in values.items():
            setting = SETTINGS[name]
            assert value == setting.default
            assert type(value) is setting.kind or (setting.unlimited and value == UNLIMITED)
    assert set(names_of("quotas")) | set(names_of("limits")) == set(SETTINGS)
    assert all(s.unit in UNITS for s in SETTINGS.values())


def test_tables_are_immutable_values() -> None:
    q = Quotas(sockets=3)
    with pytest.raises(AttributeError):
        q.sockets = 4
    with pytest.raises(AttributeError):
        _ = q.no_such_quota
    assert q == Quotas(3) and q != Quotas(4) and hash(q) == hash(Quotas(3))
    assert q.replace(sockets=5) == Quotas(5) and q == Quotas(3)
    with pytest.raises(TypeError):
        Quotas(cpu=1)  # a limit is not a quota


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_setting_is_parsed_overridden_and_bounded(name: str) -> None:
    setting = SETTINGS[name]
    text = setting.example.partition("=")[2]
    number = parse_budget_value(setting.table, name, text)
    quotas, limits = parse_limit_override(setting.example)
    got = getattr(quotas if setting.table == "quotas" else limits, name)
    assert got == setting.value(number)
    # The qualified spelling names the same setting; the other table's does not.
    parse_limit_override(f"{setting.table}.{setting.example}")
    other = "limits" if setting.table == "quotas" else "quotas"
    with pytest.raises(ConfigError, match=re.escape(f"{other}.{name}")):
        parse_limit_override(f"{other}.{setting.example}")
    with pytest.raises(ConfigError) as info:
        parse_limit_override(f"{name}=-1")
    assert info.value.key == f"{setting.table}.{name}"
    assert setting.example in limit_help()
    # A policy file takes it in its table and refuses it in the other.
    value = repr(text) if not text.isdigit() else text
    policy = policy_from_text(f"[{setting.table}]\n{name} = {value}\n")
    assert getattr(getattr(policy, setting.table), name) == setting.value(number)
    with pytest.raises(ConfigError, match=re.escape(f"{other}.{name}")):
        policy_from_text(f"[{other}]\n{name} = {value}\n")


@pytest.mark.parametrize("name", list(SETTINGS))
def test_unlimited_is_taken_only_where_the_registry_allows_it(name: str) -> None:
    setting = SETTINGS[name]
    table = setting.table
    if setting.unlimited:
        quotas, limits = parse_limit_override(f"{name}=unlimited")
        assert getattr(quotas if table == "quotas" else limits, name) == UNLIMITED
        policy = policy_from_text(f'[{table}]\n{name} = "Unlimited"\n')
        assert getattr(getattr(policy, table), name) == UNLIMITED
        assert format_value(setting, UNLIMITED) == "unlimited"
        # The worker never sees infinity: an unlimited setting is host-enforced only.
        assert setting.worker is None
    else:
        with pytest.raises(ConfigError, match="cannot be unlimited") as info:
            parse_limit_override(f"{name}=unlimited")
        assert info.value.key == f"{table}.{name}"
        with pytest.raises(ConfigError, match=re.escape(f"{table}.{name}: cannot be unlimited")):
            policy_from_text(f'[{table}]\n{name} = "unlimited"\n')
    # A TOML infinity is not the word: it is refused whatever the setting.
    with pytest.raises(ConfigError, match=re.escape(f"{table}.{name}")):
        policy_from_text(f"[{table}]\n{name} = inf\n")


def test_worker_limits_are_the_settings_the_worker_backs_up() -> None:
    home = load_policy("home")
    fields = worker_limits(home.quotas, home.limits)
    backed = {s.worker: s for s in SETTINGS.values() if s.worker}
    assert set(fields) == set(backed)
    for field, setting in backed.items():
        assert fields[field] == getattr(getattr(home, setting.table), setting.name)
    # Every such field exists in both messages that carry worker limits.
    spec = WorkerSpec("id", "t", "ipc://x", "", "", [], {}, "home", [], **fields)
    granted = PolicyGranted(1, "home", [], **fields)
    assert all(getattr(spec, f) == getattr(granted, f) == v for f, v in fields.items())


def test_worker_ceilings_take_the_most_and_zero_means_unlimited() -> None:
    small = (Quotas(sockets=2), Limits(cpu=1.0, memory=10))
    big = (Quotas(sockets=9), Limits(cpu=5.0, memory=0))
    ceilings = worker_ceilings([small, big])
    expected = {f"{s.worker}_max" for s in SETTINGS.values() if s.worker and s.ceiling}
    assert set(ceilings) == expected
    assert ceilings["nofile_max"] == 9 and ceilings["cpu_max"] == 5.0
    assert ceilings["memory_max"] == 0  # one grantable policy has no memory limit
    assert worker_ceilings([small, (Quotas(), Limits(cpu=UNLIMITED))])["cpu_max"] == 0
    assert worker_limits(Quotas(), Limits(cpu=UNLIMITED))["cpu"] == 0


def test_policy_schema_has_one_section_per_action() -> None:
    for name in ACTIONS:
        policy = policy_from_text(f'[{name}]\nallow = ["127.0.0.1 *"]\n')
        assert [r.action for r in policy.rules_for(name)] == [name]
    with pytest.raises(ConfigError, match="udp"):
        policy_from_text('[udp]\nallow = ["* *"]\n')


def test_action_rules_for_empty_hosts_and_port_zero() -> None:
    origin = Origin.parse("http://www.example.com:8080/t.tcl")
    for spec in ACTIONS.values():
        filled = spec.target_host("", origin)
        if spec.empty_host == ORIGIN_HOST:
            assert filled == origin.socket_host
        else:
            assert filled == spec.empty_host
        assert spec.target_host("192.0.2.1", origin) == "192.0.2.1"
        if spec.port_zero:
            assert spec.parse_request("127.0.0.1", "0", services=False)[1] == 0
        else:
            with pytest.raises(RequestError, match="non numeric port 0"):
                spec.parse_request("127.0.0.1", "0", services=False)
    with pytest.raises(ValueError, match="connect, listen, accept"):
        action_spec("udp")


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_the_command_line_takes_actions_and_limits_from_the_registries() -> None:
    parser = build_parser()
    run_help = " ".join(_subparser(parser, "run").format_help().split())
    assert " ".join(limit_help().split()) in run_help
    for name in ACTIONS:
        args = parser.parse_args(["policy", "check", "--action", name, "127.0.0.1", "1"])
        assert args.action == name
    with pytest.raises(SystemExit):
        parser.parse_args(["policy", "check", "--action", "udp", "127.0.0.1", "1"])
