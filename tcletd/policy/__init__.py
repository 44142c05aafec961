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

from tcletd.policy.actions import ACTIONS, Action
from tcletd.policy.addresses import CanonicalHost, Origin
from tcletd.policy.engine import (
    SAMPLE_ORIGIN,
    Decision,
    Policy,
    Rule,
    compile_rule,
    denied_message,
)
from tcletd.policy.store import known_policies, load_policy, policy_dir, policy_from_text
from tcletd.policy.words import HostWord, parse_host_word, parse_port_word

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
