"""The policy engine: compiled rules and the allow/deny decision (host side).

Pure: no sockets, no DNS, no clock, no files (:mod:`tcletd.policy.store` loads them). The host
canonicalises a tclet's request with :mod:`tcletd.policy.addresses`, asks
:meth:`Policy.needs_addresses` whether the name must be looked up at all (never when no allow
rule could match it), resolves names itself only then, and asks :meth:`Policy.decide`, which
checks the name and every resolved address and says which addresses the host may use. The
decision rule is the Tcl plugin's: allowed iff some ``allow`` rule of the action matches and no
``disallow`` rule does, so rule order never matters and an action without ``allow`` rules denies
everything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import NamedTuple, TypeVar

from tcletd.policy.actions import ACTIONS, action_spec
from tcletd.policy.addresses import (
    VARIABLES,
    CanonicalHost,
    IPAddress,
    Origin,
    normalise_address,
)
from tcletd.policy.files import PolicyDocument, RuleText
from tcletd.policy.quantities import parse_limit_override
from tcletd.policy.words import (
    ANY,
    GLOB,
    NAME,
    VARIABLE,
    HostWord,
    parse_host_word,
    parse_port_word,
    substitute,
)
from tcletd.shared.errors import ConfigError

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
        for m in VARIABLE.finditer(word):
            name = m.group(1) or m.group(2)
            if name not in VARIABLES:
                raise ValueError(f"unknown origin variable ${name}; known: {', '.join(VARIABLES)}")
        expanded = substitute(word, variables)
        return parse(expanded)
    except ValueError as exc:
        message = f"{word!r} expands to {expanded!r}: {exc}" if expanded != word else str(exc)
        raise ConfigError(
            message, file=text.file, key=f"{text.key}.{part}", line=text.line
        ) from None


class _Index:
    """The rules of one action and kind, indexed so that matching a target costs a few dict
    lookups rather than a loop over every rule and every network (the 20 us budget)."""

    __slots__ = ("any", "by_addresses", "globs", "names", "nets", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.any = tuple(r for r in rules if r.host.kind == ANY)
        # Rules that can match an address: `*`, addresses, CIDRs and classes.
        self.by_addresses = tuple(r for r in rules if r.host.kind not in (NAME, GLOB))
        self.globs = tuple(r for r in rules if r.host.kind == GLOB)
        self.names: dict[str, tuple[Rule, ...]] = {}
        nets: dict[tuple[int, int], dict[int, tuple[Rule, ...]]] = {}
        for r in rules:
            if r.host.kind == NAME:
                self.names[r.host.name] = (*self.names.get(r.host.name, ()), r)
            for version, net, mask in r.host.nets:
                table = nets.setdefault((version, mask), {})
                table[net] = (*table.get(net, ()), r)
        self.nets: dict[int, tuple[tuple[int, dict[int, tuple[Rule, ...]]], ...]] = {
            version: tuple((m, t) for (v, m), t in nets.items() if v == version)
            for version in (4, 6)
        }

    def any_by_address(self, port: int) -> bool:
        for r in self.by_addresses:  # noqa: SIM110 (a loop: any() costs a generator's call)
            if r.low <= port <= r.high:
                return True
        return False

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

    def rules_for(self, action: str, origin: Origin | None = None) -> tuple[Rule, ...]:
        """Every rule of an action as it applies to ``origin`` (for display and audit)."""
        sec = self._for_origin(origin or Origin.unknown())[action_spec(action).name]
        return tuple(sorted(sec.allow.rules + sec.disallow.rules, key=lambda r: r.order))

    def with_overrides(self, *overrides: str) -> Policy:
        """A new policy with ``NAME=VALUE`` quota/limit overrides applied (``cpu=5s``); this
        one when there are none (policies are immutable, and compiling one costs ~0.5 ms)."""
        if not overrides:
            return self
        quotas, limits = self.quotas, self.limits
        for text in overrides:
            quotas, limits = parse_limit_override(text, quotas, limits)
        return Policy(replace(self.document, quotas=quotas, limits=limits))

    def needs_addresses(self, action: str, host: CanonicalHost, port: int, origin: Origin) -> bool:
        """Whether deciding on ``host`` needs its addresses: False when the answer is the same
        whatever the name resolves to, so the host must not look it up (a lookup of a name the
        policy denies anyway leaks the name to the resolver). An address literal needs none.

        Needed only when an allow rule could match: one over addresses (``*``, an address, a
        CIDR or a class) whose port word covers ``port``, or a name or glob rule matching the
        name (then the disallow rules over addresses still need them). A disallow matching the
        name, a bad port or no such allow rule decide without them: :meth:`decide` with no
        addresses gives the same denial.
        """
        if host.ip is not None:
            return False
        act = action if action in ACTIONS else action_spec(action).name
        if not (0 <= port <= 65535) or (port == 0 and not ACTIONS[act].port_zero):
            return False
        sec = self._for_origin(origin)[act]
        if sec.disallow.by_name(host.text, port, []):
            return False
        return sec.allow.any_by_address(port) or bool(sec.allow.by_name(host.text, port, []))

    def decide(
        self,
        action: str,
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
        act = action if action in ACTIONS else action_spec(action).name
        sec = self._for_origin(origin)[act]
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
        if not (0 <= port <= 65535) or (port == 0 and not ACTIONS[act].port_zero):
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
