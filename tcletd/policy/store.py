"""Loading policies: the shipped ones by name, an operator's by name (from the operator's policy
directory) or by path, or TOML text (host side).

The only part of the policy package that reads policy files, and only regular files of bounded
size, without blocking (:func:`tcletd.policy.files.read_config_text`). A path is the operator's
word (the API, ``tcletd run --policy FILE``); a resident host's client may only name a policy
(:func:`tcletd.shared.launch.decode_run` refuses a path). Compiled policies are cached by path,
modification time and size, so a launch does not re-read and re-compile an unchanged file.
"""

from __future__ import annotations

import functools
import os
import re
import time
from pathlib import Path

import tcletd
from tcletd.policy.engine import Policy
from tcletd.policy.files import build_policy_document, parse_toml, read_policy_document
from tcletd.shared.errors import UnknownPolicyError


@functools.cache
def policy_dir() -> Path:
    """The shipped policies: ``tcletd/_policies`` in a wheel, else the repository's
    ``policies/`` (where the package lies does not change under a running process)."""
    package = Path(tcletd.__file__).parent
    installed = package / "_policies"
    return installed if installed.is_dir() else package.parent / "policies"


NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


# A directory's policy names, by its path, with the directory's inode and modification time
# when they were listed. A launch asks for the names once per policy a tclet may be granted
# (``tcletd.host.quotas.ceilings``): listing the directory each time cost the host's loop
# ~0.2 ms per launch here, four listings, before the worker's Spawn went out.
_listed: dict[str, tuple[int, int, frozenset[str]]] = {}

# A listing is kept only once the directory's modification time is this old: the kernel's
# clock for it is coarse (a tick), so a file added in the same tick as a listing could leave
# the time unchanged; one added a second later cannot (racy git's rule).
_SETTLED_NS = 1_000_000_000


def _names(directory: Path) -> frozenset[str]:
    key = str(directory)
    try:
        stat = os.stat(key)
    except OSError:
        return frozenset()
    seen = _listed.get(key)
    if seen is not None and seen[:2] == (stat.st_ino, stat.st_mtime_ns):
        return seen[2]
    try:
        names = frozenset(p.stem for p in directory.glob("*.toml") if NAME.fullmatch(p.stem))
    except OSError:
        return frozenset()
    if time.time_ns() - stat.st_mtime_ns >= _SETTLED_NS:
        _listed[key] = (stat.st_ino, stat.st_mtime_ns, names)
    return names


def known_policies(directory: str | Path | None = None) -> tuple[str, ...]:
    """Names of the shipped policies and of those in the operator's ``directory``, sorted (the
    master config is not a policy)."""
    names = _names(policy_dir())
    if directory is not None:
        names |= _names(Path(directory))
    return tuple(sorted(names - {"master"}))


def is_policy_path(name: str | Path) -> bool:
    """Whether ``name`` is a path rather than a policy's name: a Path, or text with ``/`` or
    ending in ``.toml``."""
    text = str(name)
    return isinstance(name, Path) or "/" in text or text.endswith(".toml")


_loaded: dict[tuple[str, int, int, int], Policy] = {}


def load_policy(name: str | Path, directory: str | Path | None = None) -> Policy:
    """A policy by name (``home``: the operator's ``directory`` first, then the shipped ones) or a
    policy file by path (:func:`is_policy_path`). UnknownPolicyError lists the known names;
    ConfigError says where."""
    text = str(name)
    path: Path | None = None
    if is_policy_path(name):
        path = Path(name)
    elif NAME.fullmatch(text) and text != "master":
        for home in (directory, policy_dir()):
            if home is not None and (Path(home) / f"{text}.toml").exists():
                path = Path(home) / f"{text}.toml"
                break
    if path is None:
        raise UnknownPolicyError(
            f'unknown policy "{text[:80]}"; known policies: {", ".join(known_policies(directory))}'
        )
    # Keyed by the path as named and its own lstat, never what a link points to: a symlink to a
    # policy already loaded must still reach the reader, which refuses links.
    try:
        stat = path.lstat()
        cache_key = (str(path.absolute()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
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
