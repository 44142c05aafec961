"""The policy engine, as a package: what a tclet may do with sockets, and with how much.

Host side of the trust boundary, and pure: nothing here opens a socket or asks a resolver. Its
modules, from the bottom up: :mod:`~tcletd.policy.addresses` (hosts, ports and origins,
canonicalised), :mod:`~tcletd.policy.quantities` (the quotas and limits registry, units),
:mod:`~tcletd.policy.actions` (the policy actions registry), :mod:`~tcletd.policy.words` (host
and port words), :mod:`~tcletd.policy.files` (policy TOML, strictly validated),
:mod:`~tcletd.policy.engine` (compiled rules and the decision), :mod:`~tcletd.policy.store`
(loading by name or path) and :mod:`~tcletd.policy.master` (which policies a tclet may ask for).
The names below are the package's public face; the worker never imports any of it.
"""

from __future__ import annotations

# The names below load their module on first use (PEP 562), so that importing one light module
# of the package (the registries, for the command line) does not load the engine, msgspec and
# the file readers. Not typing.TYPE_CHECKING: typing costs start-up time; mypy takes any name
# TYPE_CHECKING as true and sees the imports.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from tcletd.policy.actions import ACTIONS as ACTIONS
    from tcletd.policy.actions import Action as Action
    from tcletd.policy.addresses import CanonicalHost as CanonicalHost
    from tcletd.policy.addresses import Origin as Origin
    from tcletd.policy.engine import SAMPLE_ORIGIN as SAMPLE_ORIGIN
    from tcletd.policy.engine import Decision as Decision
    from tcletd.policy.engine import Policy as Policy
    from tcletd.policy.engine import Rule as Rule
    from tcletd.policy.engine import compile_rule as compile_rule
    from tcletd.policy.engine import denied_message as denied_message
    from tcletd.policy.store import known_policies as known_policies
    from tcletd.policy.store import load_policy as load_policy
    from tcletd.policy.store import policy_dir as policy_dir
    from tcletd.policy.store import policy_from_text as policy_from_text
    from tcletd.policy.words import HostWord as HostWord
    from tcletd.policy.words import parse_host_word as parse_host_word
    from tcletd.policy.words import parse_port_word as parse_port_word

_HOMES = {
    "actions": ("ACTIONS", "Action"),
    "addresses": ("CanonicalHost", "Origin"),
    "engine": ("SAMPLE_ORIGIN", "Decision", "Policy", "Rule", "compile_rule", "denied_message"),
    "store": ("known_policies", "load_policy", "policy_dir", "policy_from_text"),
    "words": ("HostWord", "parse_host_word", "parse_port_word"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [
    "ACTIONS",
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


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'tcletd.policy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"tcletd.policy.{module}"), name)
    globals()[name] = value
    return value
