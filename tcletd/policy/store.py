"""Loading policies: the shipped ones by name, an operator's by path, or TOML text (host side).

The only part of the policy package that reads files. Compiled policies are cached by path,
modification time and size, so a launch does not re-read and re-compile an unchanged file.
"""

from __future__ import annotations

import re
from pathlib import Path

import tcletd
from tcletd.policy.engine import Policy
from tcletd.policy.files import build_policy_document, parse_toml, read_policy_document
from tcletd.shared.errors import UnknownPolicyError


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
