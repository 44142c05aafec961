"""The attack catalogue: one ``NAME.tcl`` file per attack, its header read and validated.

Client side of the trust boundary. Catalogue files are operator data (the shipped directory
beside this module, plus any ``--catalogue DIR``), but a mistake in one makes a run judge the
wrong thing, so nothing loads in part: the first problem raises :class:`CatalogueError` whose
message starts with the file (``PATH:LINE:`` when about a line), then the key, then what was
wrong. The script itself is never parsed here: it is the whole file, handed to Tcl as it is.

A header is the block of lines at the very top that start with ``#``; the first line that does
not ends it (a ``# key: value`` after code is script). Within it, ``# key: value`` lines set
fields and other lines are free text.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path


def _split(words: str) -> tuple[str, ...]:
    return tuple(words.split())


STOPPERS = frozenset(
    _split(
        "cpu memory commands wall output sockets connects lookups policy recursion error signal "
        "demotion deadline control-bounds penalty-box"
    )
)
JUDGES = frozenset(
    _split(
        "ended survives peak-sockets worker-fds host-memory demoted dns-queries neighbour-connect "
        "listener host-responsive"
    )
)
DRIVERS = frozenset({"tclet", "control-slowloris", "status-flood"})
NEEDS = frozenset({"dns", "low-port", "root"})
# The keys of the flat Tcl dict every tclet attack gets as argv (see the design).
ARGV_KEYS = _split(
    "host echo_port silent_port sender_port closed_port listener_host listener_port low_port "
    "leak_domain slow_domain fast_domain token quick"
)

REQUIRED_KEYS = ("attack", "target", "contained", "stopped-by")
OPTIONAL_KEYS = ("judge", "driver", "count", "quick-count", "deadline", "quick-deadline", "needs")
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS
MAX_FILE_BYTES = 1024 * 1024
COUNT_RANGE = (1, 2000)
DEADLINE_RANGE_MS = (Decimal(100), Decimal(600_000))
DEFAULT_DEADLINE = 20.0
QUICK_DEADLINE_CAP = 5.0

_NAME = re.compile(r"[a-z][a-z0-9_]*")
# ``# key:`` then a space or the line's end; ``# http://x`` is free text, not an unknown key.
_KEY_LINE = re.compile(r"#\s*([a-z][a-z-]*):(.*)")
# Values end up in tables on terminals: no escape sequences, no carriage returns.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(ms|s)")
# A FIFO opened for reading blocks until a writer comes, unless O_NONBLOCK; fstat refuses it.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class CatalogueError(ValueError):
    """A catalogue file or directory that cannot be used: ``file`` (and ``line``, ``key``) say
    where, the message what was wrong; ``str()`` is ``FILE:LINE: KEY: message``."""

    def __init__(
        self, message: str, *, file: str | Path = "", line: int = 0, key: str = ""
    ) -> None:
        self.message, self.file, self.line, self.key = message, str(file), line, key
        where = f"{self.file}:{line}" if self.file and line else self.file
        if key:
            where = f"{where}: {key}" if where else key
        super().__init__(f"{where}: {message}" if where else message)


@dataclass(frozen=True)
class Attack:
    """One catalogue entry. ``script`` is the whole file (its header is Tcl comments);
    deadlines are seconds."""

    name: str
    target: str
    contained: str
    stopped_by: tuple[str, ...]
    judge: str
    driver: str
    count: int
    quick_count: int
    deadline: float
    quick_deadline: float
    needs: tuple[str, ...]
    script: str
    path: Path


def shipped_dir() -> Path:
    """The directory of the attacks shipped with tcletd."""
    return Path(__file__).resolve().parent / "catalogue"


def _read_text(path: Path) -> str:
    """The file's text: a regular file of at most MAX_FILE_BYTES, in UTF-8."""
    try:
        with open(path, "rb", opener=lambda p, _: os.open(p, _OPEN_FLAGS)) as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise CatalogueError("cannot read: not a regular file", file=path)
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CatalogueError(f"cannot read: {exc.strerror or exc}", file=path) from None
    if len(data) > MAX_FILE_BYTES:
        raise CatalogueError(f"larger than {MAX_FILE_BYTES} bytes (1 MiB)", file=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CatalogueError(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start}", file=path, line=line
        ) from None


@dataclass(frozen=True)
class _Field:
    """A header field's value and where it was set, to name in an error."""

    value: str
    path: Path
    line: int
    key: str

    def error(self, message: str) -> CatalogueError:
        return CatalogueError(message, file=self.path, line=self.line, key=self.key)


def _header(text: str, path: Path) -> dict[str, _Field]:
    """The header's ``key: value`` fields, each with where it was set."""
    fields: dict[str, _Field] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.startswith("#"):
            break
        m = _KEY_LINE.fullmatch(line)
        if m is None:
            continue
        key, rest = m.group(1), m.group(2)
        if key not in KNOWN_KEYS:
            if rest and not rest[0].isspace():
                continue  # ``# http://...``: free text that happens to hold a colon
            raise CatalogueError(
                f"unknown key {key!r}; known keys: {', '.join(KNOWN_KEYS)}",
                file=path,
                line=number,
                key=key,
            )
        if key in fields:
            raise CatalogueError(
                f"set twice (first at line {fields[key].line})", file=path, line=number, key=key
            )
        value = rest.strip()
        if not value or _CONTROL.search(value):
            what = "empty value" if not value else f"control character in {value!r}"
            raise CatalogueError(what, file=path, line=number, key=key)
        fields[key] = _Field(value, path, number, key)
    return fields


def _words(field: _Field, allowed: frozenset[str]) -> tuple[str, ...]:
    words = field.value.split()
    for word in words:
        if word not in allowed:
            expected = " ".join(sorted(allowed))
            raise field.error(f"unknown word {word!r}; expected words from: {expected}")
    if len(set(words)) != len(words):
        raise field.error(f"a word given twice in {field.value!r}")
    return tuple(words)


def _one_of(field: _Field, allowed: frozenset[str]) -> str:
    if field.value not in allowed:
        expected = " ".join(sorted(allowed))
        raise field.error(f"unknown value {field.value!r}; expected one of: {expected}")
    return field.value


def _count(field: _Field) -> int:
    low, high = COUNT_RANGE
    if not re.fullmatch(r"[0-9]{1,9}", field.value) or not low <= int(field.value) <= high:
        raise field.error(f"expected a whole number from {low} to {high}, got {field.value!r}")
    return int(field.value)


def _duration(field: _Field) -> float:
    m = _DURATION.fullmatch(field.value)
    millis = Decimal(m.group(1)) * (1 if m.group(2) == "ms" else 1000) if m else None
    low, high = DEADLINE_RANGE_MS
    if millis is None or not low <= millis <= high:
        raise field.error(
            "expected a duration with unit ms or s (like 20s or 500ms) from 0.1s to 600s, "
            f"got {field.value!r}"
        )
    return float(millis / 1000)


def load_attack(path: Path) -> Attack:
    """One catalogue file, validated; CatalogueError says what is wrong and where."""
    path = Path(path)
    if path.suffix != ".tcl":
        raise CatalogueError("not a .tcl file", file=path)
    text = _read_text(path)
    if text.startswith("\ufeff"):
        raise CatalogueError("starts with a byte-order mark (Tcl would run it)", file=path, line=1)
    fields = _header(text, path)
    for key in REQUIRED_KEYS:
        if key not in fields:
            raise CatalogueError(
                f"missing required key {key!r} (a '# {key}: ...' line in the header)", file=path
            )
    name = fields["attack"].value
    if not _NAME.fullmatch(name):
        raise fields["attack"].error(f"bad name {name!r}: expected [a-z][a-z0-9_]*")
    if name != path.stem:
        raise fields["attack"].error(f"name {name!r} is not the file's name {path.stem!r}")
    count = _count(fields["count"]) if "count" in fields else 1
    deadline = _duration(fields["deadline"]) if "deadline" in fields else DEFAULT_DEADLINE
    return Attack(
        name=name,
        target=fields["target"].value,
        contained=fields["contained"].value,
        stopped_by=_words(fields["stopped-by"], STOPPERS),
        judge=_one_of(fields["judge"], JUDGES) if "judge" in fields else "ended",
        driver=_one_of(fields["driver"], DRIVERS) if "driver" in fields else "tclet",
        count=count,
        quick_count=_count(fields["quick-count"]) if "quick-count" in fields else count,
        deadline=deadline,
        quick_deadline=(
            _duration(fields["quick-deadline"])
            if "quick-deadline" in fields
            else min(deadline, QUICK_DEADLINE_CAP)
        ),
        needs=_words(fields["needs"], NEEDS) if "needs" in fields else (),
        script=text,
        path=path,
    )


def _load_dir(directory: Path) -> list[Attack]:
    """A directory's NAME.tcl files (dotfiles, such as editors' locks, left out), by name."""
    if not directory.is_dir():
        what = "not a directory" if directory.exists() else "no such directory"
        raise CatalogueError(
            f"{what} (a catalogue is a directory of NAME.tcl files)", file=directory
        )
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise CatalogueError(f"cannot list: {exc.strerror or exc}", file=directory) from None
    files = sorted((p for p in entries if p.suffix == ".tcl" and p.name[0] != "."), key=str)
    if not files:
        raise CatalogueError("no .tcl files in this catalogue directory", file=directory)
    return [load_attack(path) for path in files]


def load_catalogue(extra: Sequence[Path] = ()) -> list[Attack]:
    """The shipped attacks, then each directory's of ``extra``, each directory's sorted by file
    name. A name defined twice, anywhere, is an error naming both files."""
    attacks: list[Attack] = []
    seen: dict[str, Path] = {}
    for directory in (shipped_dir(), *(Path(d) for d in extra)):
        for attack in _load_dir(directory):
            if attack.name in seen:
                raise CatalogueError(
                    f"attack {attack.name!r} is also defined in {seen[attack.name]}",
                    file=attack.path,
                    key="attack",
                )
            seen[attack.name] = attack.path
            attacks.append(attack)
    return attacks


def select(attacks: Sequence[Attack], only: Sequence[str]) -> list[Attack]:
    """The attacks named in ``only``, in catalogue order (all of them when ``only`` is empty);
    an unknown name is an error listing the known ones."""
    if not only:
        return list(attacks)
    known = [attack.name for attack in attacks]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise CatalogueError(
            f"unknown attack {', '.join(repr(n) for n in unknown)}; known attacks: "
            f"{', '.join(known)}"
        )
    wanted = set(only)
    return [attack for attack in attacks if attack.name in wanted]
