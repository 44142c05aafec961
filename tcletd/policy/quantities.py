"""Quotas and limits as values: their units (``64MiB``, ``10s``, ``1MiB/s``), their defaults,
and the ``NAME=VALUE`` overrides of ``--limit``.

Shared by both sides of the host: the policy files (:mod:`tcletd.policy.files`), the host's
quotas and watchdog, and the CLI. Pure: no I/O. Quantities are parsed strictly (a bad one raises
ValueError saying what was expected; the caller names the file and key), and printed back in
binary units for people.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tcletd.shared.errors import ConfigError

_NUMBER = r"\s*([0-9]+(?:\.[0-9]+)?)\s*"
_SIZE_UNITS = {"": 1, "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE_UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _number(value: object, units: Mapping[str, float], what: str, suffix: str = "") -> float:
    # bool is an int to Python but never a sensible quantity.
    if isinstance(value, bool):
        raise ValueError(f"expected {what}, got {value!r}")
    if isinstance(value, int | float):
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
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{n:.4g} B"


def format_duration(seconds: float) -> str:
    """Seconds for people, the inverse of :func:`parse_duration`: ``10 s``, ``0.25 s``."""
    return f"{seconds:.4g} s"


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value, re.ASCII):
        return int(value)
    raise ValueError(f"expected a whole number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Quotas:
    """Per-tclet network quotas, enforced by the host (sizes in bytes, rates per second)."""

    sockets: int = 8
    connects_per_second: float = 5.0
    bytes_sent: int = 64 * 2**20
    bytes_received: int = 64 * 2**20
    send_rate: int = 2**20
    output_bytes: int = 2**20


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-tclet resource limits, enforced by the host (seconds, bytes, Tcl commands)."""

    cpu: float = 10.0
    memory: int = 256 * 2**20
    wall: float = 60.0
    commands: int = 50_000_000


# key -> (parser, smallest allowed value); the dataclass defaults above are the home values.
_PARSERS: dict[str, dict[str, tuple[Callable[[object], float], float]]] = {
    "quotas": {
        "sockets": (_count, 0),
        "connects_per_second": (lambda v: _number(v, {"": 1}, "a number per second", "/s"), 1e-9),
        "bytes_sent": (parse_size, 0),
        "bytes_received": (parse_size, 0),
        "send_rate": (parse_rate, 0),  # 0: no pacing
        "output_bytes": (parse_size, 0),
    },
    "limits": {
        "cpu": (parse_duration, 1e-3),
        "memory": (parse_size, 1),
        "wall": (parse_duration, 1e-3),
        "commands": (_count, 1),
    },
}


def parse_budget_value(table: str, key: str, value: object) -> float:
    """Parse one ``[quotas]``/``[limits]`` value; ValueError says what was expected."""
    parsers = _PARSERS[table]
    if key not in parsers:
        raise KeyError(f"unknown key; expected one of: {', '.join(parsers)}")
    parse, least = parsers[key]
    number = parse(value)
    if number < least:
        raise ValueError(f"must be at least {least:g}, got {value!r}")
    return number


def coerce(cls: type[Quotas] | type[Limits], key: str, number: float) -> Any:
    # Annotations are strings here (postponed evaluation), hence the comparison with "int".
    kind = next(f.type for f in fields(cls) if f.name == key)
    return int(number) if kind == "int" else float(number)


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
    if not table:
        table = "quotas" if key in _PARSERS["quotas"] else "limits"
    if not sep or table not in _PARSERS or key not in _PARSERS[table]:
        known = ", ".join([*_PARSERS["quotas"], *_PARSERS["limits"]])
        raise ConfigError(f"expected NAME=VALUE with NAME one of: {known}", key=name or text)
    try:
        number = parse_budget_value(table, key, value.strip())
    except ValueError as exc:
        raise ConfigError(str(exc), key=f"{table}.{key}") from None
    if table == "quotas":
        return replace(quotas, **{key: coerce(Quotas, key, number)}), limits
    return quotas, replace(limits, **{key: coerce(Limits, key, number)})
