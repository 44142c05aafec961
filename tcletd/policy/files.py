"""Policy and master-config files: TOML reading and strict validation (host side).

Policies are operator data, but a mistake in one widens what untrusted tclets may do, so
nothing loads in part: the first problem raises ConfigError naming the file, the line and the
key path (``connect.allow[2].port``). Rules are strings ``"HOSTWORD PORTWORD"`` inside
``allow``/``disallow`` arrays; TOML parsers keep no positions, so :func:`locate_lines` scans
the raw text to give every value its line. Word compilation and the decision live in
:mod:`tcletd.policy.words` and :mod:`tcletd.policy.engine`, quota and limit values and their
units in :mod:`tcletd.policy.quantities`; this module knows only the file formats.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from tcletd.policy.actions import ACTIONS
from tcletd.policy.quantities import Limits, Quotas, parse_budget_value
from tcletd.shared.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

KINDS = ("allow", "disallow")
SOCKET_OPTIONS = frozenset(
    {"-blocking", "-buffering", "-buffersize", "-encoding", "-eofchar", "-translation"}
    | {"-error", "-peername", "-sockname", "-connecting", "-keepalive", "-nodelay"}
)


class UnreadableError(ConfigError):
    """The file is missing, unreadable or not TOML at all (lint exits 2 for this)."""


def error(message: str, file: str, key: str, lines: dict[str, int]) -> ConfigError:
    return ConfigError(message, file=file, key=key, line=lines.get(key, 0))


def _budget(table: str, raw: dict[str, Any], file: str, lines: dict[str, int]) -> Any:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{table}.{key}"
        try:
            values[key] = parse_budget_value(table, key, value)
        except (KeyError, ValueError) as exc:
            raise error(str(exc.args[0]), file, path, lines) from None
    return Quotas(**values) if table == "quotas" else Limits(**values)


# ---------------------------------------------------------------- TOML with lines


_TOKEN = re.compile(
    r'"""(?:\\.|[^\\])*?""""{0,2}|\'\'\'.*?\'\'\'\'{0,2}|"(?:\\.|[^"\\\n])*"|\'[^\'\n]*\''
    r"|#[^\n]*|[^\s\[\]{}=,#\"']+|\S|\n",
    re.S,
)


def _key_parts(token: str) -> list[str]:
    if token[0] in "\"'":
        return [token[1:-1]]
    return [part for part in token.split(".") if part]


def locate_lines(text: str) -> dict[str, int]:
    """Map every key path (``connect.allow[2]``, ``grant[0].policy``) to its 1-based line.

    A small scanner for TOML that tomllib already accepted: it follows tables, arrays of
    tables, dotted keys and arrays; inline tables are skipped (their keys get no line).
    """
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}
    prefix, keys, line, header, inline = "", list[str](), 1, 0, 0
    arrays: list[list[Any]] = []  # open arrays: [path, element index, element seen]
    value_at: str | None = None  # the key whose value comes next
    for m in _TOKEN.finditer(text):
        tok, first = m.group(), line
        line += tok.count("\n")
        if tok == "\n" or tok[0] == "#":
            keys = keys if arrays else []
            continue
        if inline:
            inline += (tok == "{") - (tok == "}")
            continue
        if header:
            if tok == "]":
                name = ".".join(keys)
                if header == 2:
                    counts[name] = counts.get(name, -1) + 1
                    name = f"{name}[{counts[name]}]"
                lines.setdefault(name, first)
                prefix, keys, header = name + ".", [], 0
            elif tok != "[":
                keys += _key_parts(tok)
        elif value_at is not None or arrays:
            if value_at is not None:
                path, value_at = value_at, None
            else:
                top = arrays[-1]
                if tok in "],":
                    if tok == "]":
                        arrays.pop()
                    top[1:] = [top[1] + 1, False]
                    continue
                if top[2]:
                    continue
                path, top[2] = f"{top[0]}[{top[1]}]", True
            lines.setdefault(path, first)
            if tok == "[":
                arrays.append([path, 0, False])
            inline = int(tok == "{")
        elif tok == "[" and not keys:
            header = 2 if text.startswith("[[", m.start()) else 1
        elif tok == "=":
            value_at, keys = prefix + ".".join(keys), []
        elif tok != "]":
            keys += _key_parts(tok)
    return lines


# A configuration file larger than this is refused unread: the shipped policies are under 4 KiB,
# and a host that read /dev/zero as a policy grew by 1.1 GB in a second.
MAX_CONFIG_BYTES = 1024 * 1024
# Opened without following a last-component symlink and without waiting: a FIFO opened for
# reading blocks until a writer comes (it froze the resident host's loop), unless O_NONBLOCK.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


def read_config_text(path: str | Path) -> str:
    """A configuration file's text: only a regular file of at most MAX_CONFIG_BYTES, read
    without blocking on what it turns out to be (a FIFO, device or directory is refused after
    ``fstat``, before any read); UnreadableError says why not."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableError("cannot read: a symbolic link", file=str(path)) from None
        raise UnreadableError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise UnreadableError(f"cannot read: {kind}, not a regular file", file=str(path))
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES:  # the size fstat gave can change while we read
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > MAX_CONFIG_BYTES:
            raise UnreadableError(
                f"cannot read: larger than {MAX_CONFIG_BYTES} bytes", file=str(path)
            )
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableError(f"cannot read: {exc}", file=str(path)) from None
    except OSError as exc:
        raise UnreadableError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    finally:
        os.close(fd)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFSOCK: "a socket",
}


def read_toml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The parsed document and its line map; UnreadableError for I/O or TOML syntax errors, and
    for anything but a regular file of at most MAX_CONFIG_BYTES (:func:`read_config_text`)."""
    return parse_toml(read_config_text(path), str(path))


def parse_toml(text: str, file: str) -> tuple[dict[str, Any], dict[str, int]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+)", str(exc))
        raise UnreadableError(
            f"not valid TOML: {exc}", file=file, line=int(m.group(1)) if m else 0
        ) from None
    return doc, locate_lines(text)


def convert(doc: dict[str, Any], schema: type[Any], file: str, lines: dict[str, int]) -> Any:
    """msgspec.convert with errors turned into ConfigError(file, key path, line)."""
    try:
        return msgspec.convert(doc, schema, strict=True)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.fullmatch(r"(.*?)(?: - at `\$\.?(.*)`)?", text, re.S)
        assert m is not None
        message, path = m.group(1), m.group(2) or ""
        unknown = re.fullmatch(r"Object contains unknown field `(.*)`", message)
        if unknown:
            path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
            message = "unknown key"
        else:
            message = message.replace("`", "").replace("Expected", "expected")
        # The nearest enclosing key with a known line: "a.b[2].c", then "a.b[2]", "a.b"...
        probe = path
        while probe and probe not in lines:
            shorter = re.sub(r"(\.[^.\[]*|\[[^\]]*\])$", "", probe)
            if shorter == probe:
                break
            probe = shorter
        line = lines.get(probe) or min(
            (n for k, n in lines.items() if k.startswith((f"{path}[", f"{path}."))), default=0
        )
        raise ConfigError(message, file=file, key=path, line=line) from None


# ---------------------------------------------------------------- policy documents


class _Rules(msgspec.Struct, forbid_unknown_fields=True):
    allow: list[str] = msgspec.field(default_factory=list)
    disallow: list[str] = msgspec.field(default_factory=list)


# One section per policy action, from the registry. Quota and limit values are checked by
# _budget, whose messages name the unit expected.
_PolicyDoc = msgspec.defstruct(
    "_PolicyDoc",
    [
        ("description", str, ""),
        ("hidden_options", list[str], msgspec.field(default_factory=lambda: ["-peername"])),
        ("service_names", bool, False),
        *((action, _Rules, msgspec.field(default_factory=_Rules)) for action in ACTIONS),
        ("quotas", dict[str, Any], msgspec.field(default_factory=dict)),
        ("limits", dict[str, Any], msgspec.field(default_factory=dict)),
    ],
    forbid_unknown_fields=True,
)


@dataclass(frozen=True, slots=True)
class RuleText:
    """One rule as written: ``connect.allow[2]`` on line 14 of ``file`` is ``host port``."""

    action: str
    kind: str
    index: int
    host: str
    port: str
    file: str
    line: int

    @property
    def key(self) -> str:
        return f"{self.action}.{self.kind}[{self.index}]"

    @property
    def label(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else f"{self.file}: {self.key}"
        return f"{where}: {self.kind} {self.host} {self.port}"


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A validated policy file before its words are compiled."""

    name: str
    path: Path | None
    file: str
    description: str
    hidden_options: tuple[str, ...]
    service_names: bool
    rules: tuple[RuleText, ...]
    quotas: Quotas
    limits: Limits


def read_policy_document(path: str | Path) -> PolicyDocument:
    doc, lines = read_toml(path)
    return build_policy_document(doc, lines, str(path), Path(path).stem, Path(path))


def build_policy_document(
    doc: dict[str, Any], lines: dict[str, int], file: str, name: str, path: Path | None
) -> PolicyDocument:
    parsed = convert(doc, _PolicyDoc, file, lines)
    for i, option in enumerate(parsed.hidden_options):
        if not re.fullmatch(r"-[a-z]+", option, re.ASCII):
            message = f"expected an option name like -peername, got {option!r}"
            raise error(message, file, f"hidden_options[{i}]", lines)
    rules: list[RuleText] = []
    for action in ACTIONS:
        section: _Rules = getattr(parsed, action)
        for kind in KINDS:
            for i, text in enumerate(getattr(section, kind)):
                key = f"{action}.{kind}[{i}]"
                words = text.split()
                if len(words) != 2:
                    raise error(f'expected "HOSTWORD PORTWORD", got {text!r}', file, key, lines)
                rules.append(RuleText(action, kind, i, words[0], words[1], file, lines.get(key, 0)))
    quotas = _budget("quotas", parsed.quotas, file, lines)
    limits = _budget("limits", parsed.limits, file, lines)
    options = tuple(dict.fromkeys(parsed.hidden_options))
    head = (name, path, file, parsed.description, options, parsed.service_names)
    return PolicyDocument(*head, tuple(rules), quotas, limits)
