"""``tcletd policy check`` and ``tcletd policy lint``: the policy engine for operators (host side).

Unlike the engine, this module may do I/O: ``check`` looks a name up exactly as the host does
(only when the policy needs its addresses, once, through the host's c-ares resolver and the same
nameserver option) and decides on every address. ``lint`` runs the loader's validation on
every rule (collecting all errors rather than stopping at the first) and adds warnings for
rules that are legal but almost certainly not what the operator meant.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcletd.policy import (
    ACTIONS,
    SAMPLE_ORIGIN,
    Origin,
    Rule,
    compile_rule,
    denied_message,
    known_policies,
    load_policy,
)
from tcletd.policy.addresses import CanonicalHost, IPAddress, origin_problem
from tcletd.policy.files import (
    SOCKET_OPTIONS,
    UnreadableError,
    build_policy_document,
    read_toml,
)
from tcletd.policy.master import build_master
from tcletd.shared.errors import ConfigError, RequestError

EXIT_ALLOWED, EXIT_DENIED, EXIT_BAD = 0, 1, 2


def _resolve(
    host: CanonicalHost, needed: bool, nameservers: list[str] | None
) -> tuple[list[IPAddress], str]:
    if host.ip is not None:
        return [host.ip], ""
    if not needed:
        return [], "not looked up: no allow rule could match this name (the host makes no lookup)"
    import asyncio

    from tcletd.host.resolver import Resolver

    async def lookup() -> list[IPAddress]:
        resolver = Resolver(nameservers)
        try:
            return await resolver.addresses(host.text)
        finally:
            await resolver.close()

    try:
        return asyncio.run(lookup()), ""
    except RequestError as exc:
        return [], f"cannot resolve {host.text}: {exc.message}"


def check(args: argparse.Namespace) -> int:
    """Decide one request as the host would; print the decision; 0 allowed, 1 denied."""
    policy = load_policy(args.policy)
    problem = None if args.origin is None else origin_problem(args.origin)
    if problem is not None:
        raise ConfigError(problem, key="--origin")
    origin = Origin.parse(args.origin)
    action: str = args.action
    spec = ACTIONS[action]
    host_text = spec.target_host(args.host, origin)
    details = [
        f"policy:  {policy.name} ({policy.path})",
        f"origin:  {origin.url}",
        f"request: {action} {args.host} {args.port}",
    ]
    try:
        host, port = spec.parse_request(host_text, args.port, services=policy.service_names)
        if isinstance(port, str):
            try:
                port = socket.getservbyname(port, "tcp")
            except OSError:
                raise RequestError(f"unknown service {port}") from None
    except RequestError as exc:
        _report(False, [*details, f"message: {exc.message}"])
        return EXIT_DENIED
    needed = policy.needs_addresses(action, host, port, origin)
    addresses, problem = _resolve(host, needed, getattr(args, "nameserver", None))
    details.append(f"host:    {host.text} ({'address' if host.ip is not None else 'name'})")
    if problem:
        details.append(f"note:    {problem}")
    decision = policy.decide(action, host, port, origin, addresses)
    details.append(f"checked: {' '.join(map(str, decision.checked)) or '-'}")
    details.append(f"usable:  {' '.join(map(str, decision.usable)) or '-'}")
    details.extend(f"rule:    {rule}" for rule in decision.rules)
    details.append(f"reason:  {decision.reason}")
    if not decision.allowed and action == "connect":
        details.append(f"message: {denied_message(args.host, args.port)}")
    _report(decision.allowed, details)
    return EXIT_ALLOWED if decision.allowed else EXIT_DENIED


def _report(allowed: bool, details: list[str]) -> None:
    print("ALLOWED" if allowed else "DENIED")
    for line in details:
        print(f"  {line}")


# ---------------------------------------------------------------- lint


@dataclass(frozen=True, slots=True)
class Problem:
    severity: str  # "error" or "warning"
    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.key}:" if self.key else ""
        return f"{where}: {self.severity}:{key} {self.message}"


def _from_error(exc: ConfigError) -> Problem:
    return Problem("error", exc.file, exc.line, exc.key, exc.message)


def lint_file(path: str | Path) -> list[Problem]:
    """Every problem in a policy or master file; UnreadableError if it cannot be read at all."""
    doc, lines = read_toml(path)
    file = str(path)
    if Path(path).name == "master.toml" or "grant" in doc or "deny" in doc:
        return _lint_master(doc, lines, file)
    try:
        document = build_policy_document(doc, lines, file, Path(path).stem, Path(path))
    except ConfigError as exc:
        return [_from_error(exc)]
    problems: list[Problem] = []
    rules: list[tuple[Any, Rule]] = []
    for i, text in enumerate(document.rules):
        try:
            rules.append((text, compile_rule(text, i, SAMPLE_ORIGIN)))
        except ConfigError as exc:
            problems.append(_from_error(exc))

    def warn(message: str, key: str = "", line: int = 0) -> None:
        problems.append(Problem("warning", file, line, key, message))

    for i, option in enumerate(document.hidden_options):
        if option not in SOCKET_OPTIONS:
            key = f"hidden_options[{i}]"
            warn(f"{option} is not a Tcl socket option", key, lines.get(key, 0))
    for action, spec in ACTIONS.items():
        allows = [(t, r) for t, r in rules if t.action == action and t.kind == "allow"]
        disallows = [r for t, r in rules if t.action == action and t.kind == "disallow"]
        if action == "connect" and not allows:
            warn("no allow rule: every connect is denied (a locked policy)", "connect")
        for text, rule in allows:
            for d in disallows:
                same = d.host.kind == rule.host.kind and d.host.text == rule.host.text
                if (d.host.text == "*" or same) and d.low <= rule.low and rule.high <= d.high:
                    warn(f"never has effect: {d.label} covers it", text.key, text.line)
        for text, rule in (p for p in rules if p[0].action == action):
            if not spec.port_zero and rule.high == 0:
                warn(f"port 0 never occurs in a {action} request", text.key, text.line)
            if rule.host.glob is not None and set(text.host) <= set("0123456789.*?"):
                warn("globs match names, never addresses: use a CIDR", text.key, text.line)
        # connect() to 0.0.0.0 or :: reaches this machine, so blocking loopback alone leaks.
        if action == "connect":
            pairs = (((4, 0x7F000001), (4, 0)), ((6, 1), (6, 0)))
            for text, d in (
                (t, r) for t, r in rules if t.action == action and t.kind == "disallow"
            ):
                if any(
                    d.host.matches_address(loop)
                    and not any(
                        u.host.matches_address(unspec) and u.low <= d.low and d.high <= u.high
                        for u in disallows
                    )
                    for loop, unspec in pairs
                ):
                    warn(
                        "holds loopback but not unspecified (0.0.0.0, ::), which reaches this "
                        "host too; add unspecified",
                        text.key,
                        text.line,
                    )
    return problems


def _lint_master(doc: dict[str, Any], lines: dict[str, int], file: str) -> list[Problem]:
    try:
        master = build_master(doc, lines, file, Path(file))
    except ConfigError as exc:
        return [_from_error(exc)]
    known = known_policies()
    return [
        Problem("warning", file, 0, "", f"{rule.label}: no shipped policy named {rule.policy}")
        for rule in master.rules
        if rule.policy not in known and not set(rule.policy) & set("*?[")
    ]


def lint(args: argparse.Namespace) -> int:
    """Print every problem; 0 when there are no errors, 1 with errors, 2 when unreadable."""
    try:
        problems = lint_file(args.file)
    except UnreadableError as exc:
        print(f"tcletd: {exc}", file=sys.stderr)
        return EXIT_BAD
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{args.file}: {errors} error(s), {warnings} warning(s)")
    return EXIT_DENIED if errors else EXIT_ALLOWED
