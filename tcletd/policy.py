"""The policy engine: origins, compiled rules and the allow/deny decision (host side).

Pure: no sockets, no DNS, no clock; the only I/O is reading policy files. The host
canonicalises a tclet's request with :mod:`tcletd.addresses`, resolves names itself, and asks
:meth:`Policy.decide`, which checks the name and every resolved address and says which
addresses the host may use. The decision rule is the Tcl plugin's (tclplugin-spec.md §1.3):
allowed iff some ``allow`` rule of the action matches and no ``disallow`` rule does, so rule
order never matters and an action without ``allow`` rules denies everything.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import NamedTuple, TypeVar

import tcletd
from tcletd.addresses import (
    CLASS_KEYS,
    VARIABLES,
    CanonicalHost,
    IPAddress,
    Origin,
    address_key,
    canonical_host,
    network_keys,
    normalise_address,
)
from tcletd.budget import parse_limit_override
from tcletd.errors import ConfigError, RequestError, UnknownPolicyError
from tcletd.policyfile import (
    ACTIONS,
    PolicyDocument,
    RuleText,
    build_policy_document,
    parse_toml,
    read_policy_document,
)

__all__ = [
    "SAMPLE_ORIGIN",
    "Action",
    "CanonicalHost",
    "Decision",
    "HostWord",
    "Origin",
    "Policy",
    "Rule",
    "compile_rule",
    "denied_message",
    "known_policies",
    "load_policy",
    "parse_host_word",
    "parse_port_word",
    "policy_dir",
    "policy_from_text",
]


class Action(str, enum.Enum):
    CONNECT = "connect"
    LISTEN = "listen"
    ACCEPT = "accept"


# ---------------------------------------------------------------- words

_ANY, _NAME, _GLOB, _NETS = range(4)
_VAR = re.compile(r"\$(?:\{(\w*)\}|(\w*))")
_GLOB_CHARS = re.compile(r"[*?\[]")
_GLOB_WORD = re.compile(r"[a-z0-9_.*?\[\]!-]+", re.ASCII)
_PORT_NUMBER = re.compile(r"[1-9][0-9]{0,4}|0", re.ASCII)


@dataclass(frozen=True, slots=True)
class HostWord:
    """A compiled host word: ``*``, a name, a glob on names, or address ranges."""

    kind: int
    text: str
    name: str = ""
    glob: re.Pattern[str] | None = None
    nets: tuple[tuple[int, int, int], ...] = ()

    def matches_name(self, name: str) -> bool:
        if self.kind == _NAME:
            return name == self.name
        if self.kind == _GLOB:
            assert self.glob is not None
            return self.glob.match(name) is not None
        return self.kind == _ANY

    def matches_address(self, key: tuple[int, int]) -> bool:
        if self.kind == _NETS:
            version, number = key
            return any(v == version and number & mask == net for v, net, mask in self.nets)
        return self.kind == _ANY

    @property
    def is_address(self) -> bool:
        return self.kind == _NETS


def parse_host_word(word: str) -> HostWord:
    """Compile a host word; ValueError says what is wrong with it.

    Names and globs match only the requested name; addresses, CIDRs and classes only
    addresses (an IP-literal request, or the addresses the host resolved); ``*`` both.
    """
    lowered = word.lower()
    if word == "*":
        return HostWord(_ANY, word)
    if lowered in CLASS_KEYS:
        return HostWord(_NETS, word, nets=CLASS_KEYS[lowered])
    if "/" in word:
        try:
            return HostWord(_NETS, word, nets=(network_keys(word),))
        except ValueError as exc:
            raise ValueError(f"expected a CIDR like 10.0.0.0/8 or fd00::/8: {exc}") from None
    if _GLOB_CHARS.search(word):
        labels = [
            label if _GLOB_CHARS.search(label) or label.isascii() else _idna(label)
            for label in lowered.removesuffix(".").split(".")
        ]
        pattern = ".".join(labels)
        if not _GLOB_WORD.fullmatch(pattern):
            raise ValueError(f"expected a glob over host names like *.example.com, got {word!r}")
        return HostWord(_GLOB, word, glob=re.compile(fnmatch.translate(pattern)))
    try:
        host = canonical_host(word)
    except RequestError as exc:
        raise ValueError(f"expected a host word: {exc.message}") from None
    if host.ip is not None:
        return HostWord(
            _NETS, word, nets=((*address_key(host.ip), (1 << host.ip.max_prefixlen) - 1),)
        )
    return HostWord(_NAME, word, name=host.text)


def _idna(label: str) -> str:
    return label.encode("idna").decode("ascii")


def parse_port_word(word: str) -> tuple[int, int]:
    """Compile a port word (``25``, ``1000-2000``, ``>1024``, ``<1025``, ``*``) to a closed range.

    ValueError for malformed numbers and for ranges that can never match (``5-3``, ``>65535``).
    """
    if word == "*":
        return 0, 65535
    if word[:1] in "<>":
        bound = _port_number(word[1:])
        low, high = (bound + 1, 65535) if word[0] == ">" else (0, bound - 1)
    elif "-" in word:
        first, _, second = word.partition("-")
        low, high = _port_number(first), _port_number(second)
    else:
        low = high = _port_number(word)
    if low > high:
        raise ValueError(f"port word {word!r} can never match")
    return low, high


def _port_number(text: str) -> int:
    if not _PORT_NUMBER.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"expected a port number 0..65535 in plain decimal, got {text!r}")
    return int(text)


def _substitute(word: str, variables: dict[str, str]) -> str:
    # Escape glob characters in substituted values: an origin's URL is data, never a pattern.
    def value(m: re.Match[str]) -> str:
        text = variables[m.group(1) or m.group(2)]
        return re.sub(r"([*?\[])", r"[\1]", text)

    return _VAR.sub(value, word)


# ---------------------------------------------------------------- rules and decisions


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule; ``order`` is its position in the file, used only to sort reports."""

    action: str
    kind: str
    host: HostWord
    low: int
    high: int
    label: str
    order: int


_W = TypeVar("_W")
SAMPLE_ORIGIN = Origin.parse("http://origin.example:80/dir/tclet.tcl")


def compile_rule(text: RuleText, order: int, origin: Origin) -> Rule:
    """Compile one rule, substituting ``origin``'s variables; ConfigError names word and line."""
    variables = origin.variables()
    host = _compile_word(text, "host", text.host, variables, parse_host_word)
    low, high = _compile_word(text, "port", text.port, variables, parse_port_word)
    return Rule(text.action, text.kind, host, low, high, text.label, order)


def _compile_word(
    text: RuleText, part: str, word: str, variables: dict[str, str], parse: Callable[[str], _W]
) -> _W:
    expanded = word
    try:
        for m in _VAR.finditer(word):
            name = m.group(1) or m.group(2)
            if name not in VARIABLES:
                raise ValueError(f"unknown origin variable ${name}; known: {', '.join(VARIABLES)}")
        expanded = _substitute(word, variables)
        return parse(expanded)
    except ValueError as exc:
        message = f"{word!r} expands to {expanded!r}: {exc}" if expanded != word else str(exc)
        raise ConfigError(
            message, file=text.file, key=f"{text.key}.{part}", line=text.line
        ) from None


class _Index:
    """The rules of one action and kind, indexed so that matching a target costs a few dict
    lookups rather than a loop over every rule and every network (the 20 us budget)."""

    __slots__ = ("any", "globs", "names", "nets", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.any = tuple(r for r in rules if r.host.kind == _ANY)
        self.globs = tuple(r for r in rules if r.host.kind == _GLOB)
        self.names: dict[str, tuple[Rule, ...]] = {}
        nets: dict[tuple[int, int], dict[int, tuple[Rule, ...]]] = {}
        for r in rules:
            if r.host.kind == _NAME:
                self.names[r.host.name] = (*self.names.get(r.host.name, ()), r)
            for version, net, mask in r.host.nets:
                table = nets.setdefault((version, mask), {})
                table[net] = (*table.get(net, ()), r)
        self.nets: dict[int, tuple[tuple[int, dict[int, tuple[Rule, ...]]], ...]] = {
            version: tuple((m, t) for (v, m), t in nets.items() if v == version)
            for version in (4, 6)
        }

    # Plain loops rather than comprehensions: each comprehension is a function call, and these
    # run several times per decision.
    def by_name(self, name: str, port: int, hits: list[Rule]) -> list[Rule]:
        for r in (*self.any, *self.names.get(name, ())):
            if r.low <= port <= r.high:
                hits.append(r)
        for r in self.globs:
            if r.low <= port <= r.high and r.host.glob and r.host.glob.match(name):
                hits.append(r)
        return hits

    def by_address(self, version: int, number: int, port: int, hits: list[Rule]) -> list[Rule]:
        for r in self.any:
            if r.low <= port <= r.high:
                hits.append(r)
        for mask, table in self.nets[version]:
            for r in table.get(number & mask, ()):
                if r.low <= port <= r.high:
                    hits.append(r)
        return hits


@dataclass(frozen=True, slots=True)
class _Section:
    allow: _Index
    disallow: _Index


class Decision(NamedTuple):
    """The answer for one request. ``usable`` lists, in resolver order, the checked addresses
    the host may connect to (or bind, or accept from); it never holds an unchecked one.
    ``rules`` are the deciding rules as ``file:line: kind HOST PORT``."""

    allowed: bool
    action: str
    canonical_host: str
    port: int
    checked: tuple[IPAddress, ...]
    usable: tuple[IPAddress, ...]
    rules: tuple[str, ...]
    reason: str


def denied_message(host_text: str, port_text: str) -> str:
    """The plugin's refusal, with host and port as the tclet spelled them."""
    return f"permission denied for host {host_text} port {port_text}"


class Policy:
    """An immutable, compiled policy. Share one object between tclets freely."""

    def __init__(self, doc: PolicyDocument) -> None:
        self.name = doc.name
        self.path = doc.path
        self.description = doc.description
        self.hidden_options = doc.hidden_options
        self.service_names = doc.service_names
        self.quotas = doc.quotas
        self.limits = doc.limits
        self.document = doc
        self._templates = any("$" in r.host + r.port for r in doc.rules)
        self._static = self._compile(SAMPLE_ORIGIN, templates=False, strict=True)
        # Compile the origin-variable rules once against a sample origin, so that a bad one
        # fails at load rather than silently never matching.
        self._compile(SAMPLE_ORIGIN, templates=True, strict=True)
        self._cache: dict[str, dict[str, _Section]] = {}

    def _compile(self, origin: Origin, *, templates: bool, strict: bool) -> dict[str, _Section]:
        rules: list[Rule] = []
        for i, text in enumerate(self.document.rules):
            if not templates and "$" in text.host + text.port:
                continue
            try:
                rules.append(compile_rule(text, i, origin))
            except ConfigError:
                if strict:
                    raise
                # This origin's value does not make a valid word, so the rule cannot match.
        return {
            a: _Section(
                _Index([r for r in rules if r.action == a and r.kind == "allow"]),
                _Index([r for r in rules if r.action == a and r.kind == "disallow"]),
            )
            for a in ACTIONS
        }

    def _for_origin(self, origin: Origin) -> dict[str, _Section]:
        if not self._templates or not origin.known:
            return self._static
        sections = self._cache.get(origin.url)
        if sections is None:
            if len(self._cache) >= 1024:
                self._cache.clear()
            sections = self._compile(origin, templates=True, strict=False)
            self._cache[origin.url] = sections
        return sections

    def rules_for(self, action: Action | str, origin: Origin | None = None) -> tuple[Rule, ...]:
        """Every rule of an action as it applies to ``origin`` (for display and audit)."""
        sec = self._for_origin(origin or Origin.unknown())[Action(action).value]
        return tuple(sorted(sec.allow.rules + sec.disallow.rules, key=lambda r: r.order))

    def with_overrides(self, *overrides: str) -> Policy:
        """A new policy with ``NAME=VALUE`` quota/limit overrides applied (``cpu=5s``)."""
        quotas, limits = self.quotas, self.limits
        for text in overrides:
            quotas, limits = parse_limit_override(text, quotas, limits)
        return Policy(replace(self.document, quotas=quotas, limits=limits))

    def decide(
        self,
        action: Action | str,
        host: CanonicalHost,
        port: int,
        origin: Origin,
        addresses: Sequence[IPAddress] | None = None,
    ) -> Decision:
        """Decide one request on the name and every address (see docs/policy.md).

        ``addresses`` are the host's resolutions of ``host.text``; for an IP literal they may be
        omitted (the literal is its own single address). A disallow matching the name or any
        address denies the whole request; otherwise an address is usable if an allow rule
        matches it or the name. A name the host could not resolve (no addresses) is allowed
        with nothing usable when an allow rule matches the name.
        """
        act = action.value if isinstance(action, Action) else action
        try:
            sec = self._for_origin(origin)[act]
        except KeyError:
            raise ValueError(f"unknown action {act!r}; expected one of {ACTIONS}") from None
        name = host.text if host.ip is None else None
        if host.ip is not None:
            if addresses is not None and list(map(normalise_address, addresses)) != [host.ip]:
                raise ValueError(f"addresses {addresses!r} are not the literal {host.text}")
            addresses = (host.ip,)
        # Normalise, key and deduplicate in one pass: ipaddress's own __hash__ is slow.
        found: list[IPAddress] = []
        keys: list[tuple[int, int]] = []
        for address in addresses or ():
            if not isinstance(address, IPv4Address):
                address = normalise_address(address)
            key = (4 if isinstance(address, IPv4Address) else 6, int(address))
            if key not in keys:
                keys.append(key)
                found.append(address)
        checked = tuple(found)
        if not (0 <= port <= 65535) or (port == 0 and act != "listen"):
            reason = f"port {port} out of range"
            return Decision(False, act, host.text, port, checked, (), (), reason)
        deny, allow = sec.disallow, sec.allow
        denied: list[Rule] = []
        if name is not None:
            deny.by_name(name, port, denied)
        for version, number in keys:
            deny.by_address(version, number, port, denied)
        if denied:
            labels = _labels(denied)
            reason = f"a disallow rule for {act} matches"
            return Decision(False, act, host.text, port, checked, (), labels, reason)
        deciding: list[Rule] = []
        if name is not None:
            allow.by_name(name, port, deciding)
        by_name = bool(deciding)
        usable: list[IPAddress] = []
        for address, (version, number) in zip(checked, keys, strict=True):
            before = len(deciding)
            if len(allow.by_address(version, number, port, deciding)) > before or by_name:
                usable.append(address)
        allowed = bool(usable) or (not checked and bool(deciding))
        labels = _labels(deciding)
        unknown = " (origin unknown: rules naming origin variables do not apply)"
        unknown = unknown if self._templates and not origin.known else ""
        if allowed:
            reason = f"allowed; {len(usable)} of {len(checked)} addresses usable"
        elif not allow.rules and not unknown:
            reason = f"the policy has no allow rule for {act}"
        else:
            reason = f"no allow rule for {act} matches {host.text} port {port}{unknown}"
        return Decision(allowed, act, host.text, port, checked, tuple(usable), labels, reason)


def _order(rule: Rule) -> int:
    return rule.order


def _labels(rules: list[Rule]) -> tuple[str, ...]:
    if len(rules) < 2:
        return tuple(r.label for r in rules)
    return tuple(dict.fromkeys(r.label for r in sorted(rules, key=_order)))


# ---------------------------------------------------------------- loading


def policy_dir() -> Path:
    """The shipped policies: ``tcletd/_policies`` in a wheel, else the repository's
    ``policies/``."""
    package = Path(tcletd.__file__).parent
    installed = package / "_policies"
    return installed if installed.is_dir() else package.parent / "policies"


def known_policies() -> tuple[str, ...]:
    """Names of the shipped policies, sorted (the master config is not a policy)."""
    return tuple(sorted(p.stem for p in policy_dir().glob("*.toml") if p.stem != "master"))


_loaded: dict[tuple[str, int, int], Policy] = {}


def load_policy(name: str | Path) -> Policy:
    """A shipped policy by name (``home``) or a policy file by path (anything with ``/`` or
    ending in ``.toml``). UnknownPolicyError lists the known names; ConfigError says where."""
    text = str(name)
    if isinstance(name, Path) or "/" in text or text.endswith(".toml"):
        path = Path(name)
    elif re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", text) and text in known_policies():
        path = policy_dir() / f"{text}.toml"
    else:
        raise UnknownPolicyError(
            f'unknown policy "{text}"; known policies: {", ".join(known_policies())}'
        )
    try:
        stat = path.stat()
        cache_key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:
        cache_key = None
    if cache_key is not None and cache_key in _loaded:
        return _loaded[cache_key]
    policy = Policy(read_policy_document(path))
    if cache_key is not None:
        if len(_loaded) >= 64:
            _loaded.clear()
        _loaded[cache_key] = policy
    return policy


def policy_from_text(text: str, name: str = "inline", file: str = "<policy>") -> Policy:
    """Compile a policy from TOML text (tests, embedders); same validation as files."""
    doc, lines = parse_toml(text, file)
    return Policy(build_policy_document(doc, lines, file, name, None))
