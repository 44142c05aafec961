"""The master config: which policies a tclet may ask for (``policy NAME``), for which origins.

Host side; the plugin's ``plugin.cfg``. ``deny`` entries win over ``grant`` entries; an origin
pattern is a glob over canonical origin URLs (which always carry the port) or ``UNKNOWN``.
Validated as strictly as a policy: the first problem names the file, the line and the key.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tcletd.policy.addresses import Origin
from tcletd.policy.files import convert, error, read_toml
from tcletd.policy.store import policy_dir


class _GrantDoc(msgspec.Struct, forbid_unknown_fields=True):
    policy: str
    origins: list[str]


class _MasterDoc(msgspec.Struct, forbid_unknown_fields=True):
    grant: list[_GrantDoc] = msgspec.field(default_factory=list)
    deny: list[_GrantDoc] = msgspec.field(default_factory=list)


# A canonical origin URL always carries its port, so a pattern without one can never match.
_PORTLESS = re.compile(r"(https?|ftp|wss?)://[^/:*?\[\]]+(/.*)?")


@dataclass(frozen=True, slots=True)
class MasterRule:
    kind: str  # "grant" or "deny"
    policy: str  # a policy name, or a glob over names
    origins: tuple[str, ...]  # globs over canonical origin URLs, or "UNKNOWN"
    label: str  # "file:line: grant home"

    def matches(self, policy_name: str, origin: Origin) -> bool:
        if not fnmatch.fnmatchcase(policy_name, self.policy):
            return False
        for pattern in self.origins:
            if pattern == "UNKNOWN":
                if not origin.known:
                    return True
            elif origin.known and fnmatch.fnmatchcase(origin.url, pattern):
                return True
        return False


@dataclass(frozen=True, slots=True)
class MasterDecision:
    allowed: bool
    rule: str  # the deciding rule's label, "" when no rule matched
    reason: str


@dataclass(frozen=True, slots=True)
class MasterConfig:
    """Which policies a tclet may request for which origins (the plugin's plugin.cfg).

    Allowed iff some ``grant`` matches the policy name and origin and no ``deny`` does.
    Origin patterns are globs on the canonical origin URL; ``UNKNOWN`` matches a tclet whose
    origin is unknown, which no glob (not even ``*``) does.
    """

    path: Path | None
    rules: tuple[MasterRule, ...]

    def check(self, policy_name: str, origin: Origin) -> MasterDecision:
        for rule in self.rules:
            if rule.kind == "deny" and rule.matches(policy_name, origin):
                return MasterDecision(False, rule.label, f"policy {policy_name} denied")
        for rule in self.rules:
            if rule.kind == "grant" and rule.matches(policy_name, origin):
                return MasterDecision(True, rule.label, f"policy {policy_name} granted")
        return MasterDecision(False, "", f"no grant of policy {policy_name} for {origin.url}")

    def allows(self, policy_name: str, origin: Origin) -> bool:
        return self.check(policy_name, origin).allowed


def load_master(path: str | Path | None = None) -> MasterConfig:
    """Load the master config (default: the shipped ``master.toml``); ConfigError if invalid."""
    if path is None:
        path = policy_dir() / "master.toml"
    doc, lines = read_toml(path)
    return build_master(doc, lines, str(path), Path(path))


def build_master(
    doc: dict[str, Any], lines: dict[str, int], file: str, path: Path | None
) -> MasterConfig:
    parsed: _MasterDoc = convert(doc, _MasterDoc, file, lines)
    rules: list[MasterRule] = []
    for kind, entries in (("grant", parsed.grant), ("deny", parsed.deny)):
        for i, entry in enumerate(entries):
            key = f"{kind}[{i}]"
            if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", entry.policy, re.ASCII):
                raise error("expected a policy name or glob", file, f"{key}.policy", lines)
            for j, pattern in enumerate(entry.origins):
                if not pattern or any(c.isspace() for c in pattern) or _PORTLESS.fullmatch(pattern):
                    message = (
                        f"{pattern!r} can never match: expected a glob on canonical origin URLs, "
                        "which always carry the port (http://host:80/*), or UNKNOWN"
                    )
                    raise error(message, file, f"{key}.origins[{j}]", lines)
            line = lines.get(key, 0)
            label = f"{file}:{line}" if line else f"{file}: {key}"
            label = f"{label}: {kind} {entry.policy}"
            rules.append(MasterRule(kind, entry.policy, tuple(entry.origins), label))
    return MasterConfig(path, tuple(rules))
