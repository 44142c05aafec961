"""Quotas and limits: the one registry where each is declared, their units (``64MiB``,
``10s``, ``1MiB/s``), their defaults, and the ``NAME=VALUE`` overrides of ``--limit``.

Host side; pure (no I/O). Each :class:`Setting` says, in one place, everything about one quota or
limit: its name and table (``[quotas]`` or ``[limits]``), its parser, unit and smallest value, its
``home`` default, its help text, who enforces it, and which
:class:`~tcletd.shared.protocol.WorkerSpec` field carries it when the worker backs it up. From
:data:`SETTINGS` come the policy file schema (:mod:`tcletd.policy.files`), the typed tables
:class:`Quotas` and :class:`Limits`, the ``--limit`` parser and its help, the worker's own limits
(:func:`worker_limits`), and the table in ``docs/policy.md`` (checked by a test). Adding a quota or
limit means a Setting here and the code that enforces it.

Quantities are parsed strictly (a bad one raises ValueError saying what was expected; the caller
names the file and key), and printed back in binary units for people. A Setting whose ``unlimited``
is true also takes the word ``unlimited``, held as :data:`UNLIMITED` (``math.inf``) everywhere:
every comparison against it is false, :func:`format_value` prints it back as ``unlimited``, and
:func:`worker_limits` hands the worker ``0`` (none). Only host-enforced settings allow it; one the
worker backs with an rlimit or its command budget (and the rates) stays bounded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from tcletd.shared.errors import ConfigError

_NUMBER = r"\s*([0-9]+(?:\.[0-9]+)?)\s*"
_SIZE_UNITS = {"": 1, "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
UNLIMITED = math.inf
UNLIMITED_WORD = "unlimited"


def _number(value: object, units: Mapping[str, float], what: str, suffix: str = "") -> float:
    # bool is an int to Python but never a sensible quantity.
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            # A TOML inf or nan is not the word: only ``unlimited`` says "no limit".
            raise ValueError(f"expected {what} (finite), got {value!r}")
        return float(value)
    if isinstance(value, str):
        tail = f"(?:{re.escape(suffix)})?" if suffix else ""
        m = re.fullmatch(_NUMBER + r"([A-Za-z]*)" + tail + r"\s*", value, re.ASCII)
        if m and m.group(2) in units:
            return float(m.group(1)) * units[m.group(2)]
    raise ValueError(f"expected {what}, got {value!r}")


def parse_size(value: object) -> int:
    """``64MiB``, ``1.5GB``, ``512kB`` or a plain integer (bytes) -> bytes."""
    return round(_number(value, _SIZE_UNITS, "a size like 64MiB, 1.5GB or a number of bytes"))


def parse_rate(value: object) -> int:
    """``1MiB`` or ``1MiB/s`` (bytes per second) -> bytes per second."""
    return round(_number(value, _SIZE_UNITS, "a rate like 1MiB or 1MiB/s", "/s"))


def parse_duration(value: object) -> float:
    """``10s``, ``1.5m``, ``250ms``, ``1h`` or a plain number (seconds) -> seconds."""
    return _number(value, _TIME_UNITS, "a duration like 10s, 1.5m or 250ms")


def format_size(n: float) -> str:
    """Bytes for people, binary units, the inverse of :func:`parse_size`: ``64 MiB``, ``100 B``."""
    if n == UNLIMITED:
        return UNLIMITED_WORD
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{n:.4g} B"


def format_duration(seconds: float) -> str:
    """Seconds for people, the inverse of :func:`parse_duration`: ``10 s``, ``0.25 s``."""
    if seconds == UNLIMITED:
        return UNLIMITED_WORD
    return f"{seconds:.4g} s"


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value, re.ASCII):
        return int(value)
    raise ValueError(f"expected a whole number, got {value!r}")


def _per_second(value: object) -> float:
    return _number(value, {"": 1}, "a number per second", "/s")


@dataclass(frozen=True, slots=True)
class Setting:
    """One quota or limit. ``kind`` is the Python type of its value; ``unit`` one of
    :data:`UNITS` (how values are written back for people); ``minimum`` the smallest
    value a policy or override may give; ``default`` the ``home`` value every policy inherits;
    ``doc`` its type as ``docs/policy.md`` shows it; ``help`` and ``example`` feed ``--limit``'s
    help; ``enforcer`` says who holds the line; ``worker`` names the WorkerSpec field by which the
    worker enforces it on itself too, and ``ceiling`` whether a hard rlimit (``<worker>_max``)
    must leave room for a policy the tclet may still be granted; ``unlimited`` whether
    ``unlimited`` (:data:`UNLIMITED`) is a value it takes."""

    name: str
    table: str
    kind: type[int] | type[float]
    parse: Callable[[object], float]
    unit: str
    minimum: float
    default: float
    doc: str
    help: str
    example: str
    enforcer: str
    worker: str | None = None
    ceiling: bool = False
    unlimited: bool = False

    def value(self, number: float) -> int | float:
        if number == UNLIMITED:
            return UNLIMITED
        return int(number) if self.kind is int else float(number)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting(
            "sockets", "quotas", int, _count, "count", 0, 8,
            "whole number, open sockets per tclet (≥ 0)",
            "connected plus listening sockets", "sockets=4",
            "host (slots counted at grant and close); worker backstop: RLIMIT_NOFILE",
            worker="nofile", ceiling=True,
        ),
        Setting(
            "connects_per_second", "quotas", float, _per_second, "per second", 1e-9, 5.0,
            "number (> 0), `/s` optional",
            "connect requests in any one second", "connects_per_second=2",
            "host (a sliding one-second window)",
        ),
        Setting(
            "bytes_sent", "quotas", int, parse_size, "bytes", 0, 64 * 2**20,
            "size or `unlimited`",
            "bytes sent, over all sockets", "bytes_sent=1MiB",
            "host (kernel TCP_INFO counters; sockets shut down)",
            unlimited=True,
        ),
        Setting(
            "bytes_received", "quotas", int, parse_size, "bytes", 0, 64 * 2**20,
            "size or `unlimited`",
            "bytes received, over all sockets", "bytes_received=1MiB",
            "host (kernel TCP_INFO counters; sockets shut down)",
            unlimited=True,
        ),
        Setting(
            "send_rate", "quotas", int, parse_rate, "bytes/s", 0, 2**20,
            "size per second, `/s` optional; `0` = no pacing",
            "kernel send pacing per socket (0: none)", "send_rate=64KiB/s",
            "kernel (SO_MAX_PACING_RATE, set by the host)",
        ),
        Setting(
            "output_bytes", "quotas", int, parse_size, "bytes", 0, UNLIMITED,
            "size or `unlimited`, the tclet's stdout/stderr",
            "stdout plus stderr", "output_bytes=512KiB",
            "host (counted as it reads, relayed with backpressure; the tclet is ended)",
            unlimited=True,
        ),
        Setting(
            "lookups_per_second", "quotas", float, _per_second, "per second", 1e-9, 5.0,
            "number (> 0), `/s` optional",
            "name lookups the host makes for it in any one second", "lookups_per_second=2",
            "host (a sliding one-second window; counts only lookups the policy needed)",
        ),
        Setting(
            "cpu", "limits", float, parse_duration, "seconds", 1e-3, 10.0,
            "duration (> 0)",
            "CPU seconds", "cpu=5s",
            "host (watchdog); worker backstop: RLIMIT_CPU",
            worker="cpu", ceiling=True,
        ),
        Setting(
            "memory", "limits", int, parse_size, "bytes", 1, 256 * 2**20,
            "size (> 0)",
            "resident memory", "memory=128MiB",
            "host (watchdog); worker backstop: RLIMIT_AS",
            worker="memory", ceiling=True,
        ),
        Setting(
            "wall", "limits", float, parse_duration, "seconds", 1e-3, UNLIMITED,
            "duration (> 0) or `unlimited`",
            "wall-clock time since launch", "wall=30s",
            "host (watchdog)",
            unlimited=True,
        ),
        Setting(
            "commands", "limits", int, _count, "count", 1, 50_000_000,
            "whole number (≥ 1), Tcl commands",
            "Tcl commands, over every interpreter of the tclet", "commands=1000000",
            "worker (one budget for the tclet's interpreter tree; reported to the host)",
            worker="commands",
        ),
    )
}  # fmt: skip

TABLES = ("quotas", "limits")
UNITS = ("count", "per second", "bytes", "bytes/s", "seconds")


def format_value(setting: Setting, value: float) -> str:
    """A value as a policy file would write it most simply: ``64MiB``, ``1MiB/s``, ``10s``,
    ``1h``, ``8``, ``unlimited``; the inverse of the Setting's parser."""
    if value == UNLIMITED:
        return UNLIMITED_WORD
    if setting.unit in ("bytes", "bytes/s") and value:
        suffix = "/s" if setting.unit == "bytes/s" else ""
        for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value % factor == 0:
                return f"{value / factor:g}{unit}{suffix}"
        return f"{_plain(value)}{suffix}"
    if setting.unit == "seconds":
        return f"{value / 3600:g}h" if value % 3600 == 0 else f"{value:g}s"
    return _plain(value)


def _plain(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


_T = TypeVar("_T", bound="_Table")


class _Table:
    """An immutable set of values for one table, with every Setting of that table present.

    Values are read as attributes (``quotas.sockets``); the registry, not this class, says which
    exist, so a new Setting needs no edit here. Construct with the values in registry order, by
    name, or not at all (the defaults)."""

    __slots__ = ("_values",)
    TABLE: ClassVar[str]
    _values: dict[str, int | float]

    def __init__(self, *args: float, **kwargs: float) -> None:
        names = names_of(self.TABLE)
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}: at most {len(names)} values")
        given = dict(zip(names, args, strict=False))
        for key, number in kwargs.items():
            if key not in names or key in given:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated {key!r}")
            given[key] = number
        values = {n: SETTINGS[n].value(given.get(n, SETTINGS[n].default)) for n in names}
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> float:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no {name!r}") from None

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Table)
            and type(other) is type(self)
            and other._values == self._values
        )

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({inner})"

    def replace(self: _T, **changes: float) -> _T:
        """A copy with ``changes`` applied (same type)."""
        return type(self)(**{**self._values, **changes})

    def items(self) -> list[tuple[str, int | float]]:
        return list(self._values.items())


class Quotas(_Table):
    """Per-tclet network quotas, enforced by the host (sizes in bytes, rates per second)."""

    __slots__ = ()
    TABLE = "quotas"


class Limits(_Table):
    """Per-tclet resource limits, enforced by the host (seconds, bytes, Tcl commands)."""

    __slots__ = ()
    TABLE = "limits"


def names_of(table: str) -> tuple[str, ...]:
    """The Setting names of one table, in registry order."""
    return tuple(n for n, s in SETTINGS.items() if s.table == table)


def parse_budget_value(table: str, key: str, value: object) -> float:
    """Parse one ``[quotas]``/``[limits]`` value (``unlimited``: :data:`UNLIMITED`, where the
    Setting allows it); ValueError says what was expected, KeyError that the key is unknown."""
    setting = SETTINGS.get(key)
    if setting is None or setting.table != table:
        raise KeyError(f"unknown key; expected one of: {', '.join(names_of(table))}")
    if isinstance(value, str) and value.strip().lower() == UNLIMITED_WORD:
        if not setting.unlimited:
            raise ValueError(f"cannot be unlimited (only {unlimited_names()} can), got {value!r}")
        return UNLIMITED
    number = setting.parse(value)
    if number < setting.minimum:
        raise ValueError(f"must be at least {setting.minimum:g}, got {value!r}")
    return number


def parse_limit_override(
    text: str, quotas: Quotas | None = None, limits: Limits | None = None
) -> tuple[Quotas, Limits]:
    """Apply one ``NAME=VALUE`` override (``cpu=5s``, ``quotas.sockets=4``) to new objects.

    Returns new immutable ``(quotas, limits)``; the inputs (default: the built-in defaults) are
    not changed. ConfigError names the key.
    """
    quotas = quotas if quotas is not None else Quotas()
    limits = limits if limits is not None else Limits()
    name, sep, value = text.partition("=")
    name = name.strip()
    table, _, key = name.rpartition(".")
    setting = SETTINGS.get(key)
    if not table and setting is not None:
        table = setting.table
    if not sep or setting is None or table != setting.table:
        known = ", ".join(SETTINGS)
        raise ConfigError(f"expected NAME=VALUE with NAME one of: {known}", key=name or text)
    try:
        number = parse_budget_value(table, key, value.strip())
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{table}.{key}") from None
    if table == "quotas":
        return quotas.replace(**{key: number}), limits
    return quotas, limits.replace(**{key: number})


def unlimited_names() -> str:
    """The Settings that may be ``unlimited``, for messages and help."""
    return ", ".join(s.name for s in SETTINGS.values() if s.unlimited)


def limit_help() -> str:
    """``--limit``'s help: every Setting's example, from the registry."""
    examples = ", ".join(s.example for s in SETTINGS.values())
    return (
        f"override a quota or limit of the policy: {examples}; "
        f"{unlimited_names()} may be {UNLIMITED_WORD} (repeatable)"
    )


def worker_limits(quotas: Quotas, limits: Limits) -> dict[str, Any]:
    """What the worker enforces on itself, as WorkerSpec / PolicyGranted fields (0 = none, which
    is how the wire says unlimited)."""
    values = {**dict(quotas.items()), **dict(limits.items())}
    return {
        s.worker: s.kind(0) if values[s.name] == UNLIMITED else values[s.name]
        for s in SETTINGS.values()
        if s.worker
    }


def worker_ceilings(grantable: list[tuple[Quotas, Limits]]) -> dict[str, Any]:
    """A new worker's hard rlimits (WorkerSpec's ``<field>_max``): the most of every policy its
    tclet may still be granted, so that its limits can follow a grant (0: one has no limit)."""
    out: dict[str, Any] = {}
    for s in SETTINGS.values():
        if s.worker and s.ceiling:
            values = [
                float(getattr(q if s.table == "quotas" else lim, s.name)) for q, lim in grantable
            ]
            most = 0.0 if 0 in values or UNLIMITED in values else max(values)
            out[f"{s.worker}_max"] = s.value(most)
    return out
