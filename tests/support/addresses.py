"""Spellings of IPv4 addresses that the socket layer takes for the same address."""

from __future__ import annotations

from ipaddress import IPv4Address


def ipv4_spellings(number: int) -> list[str]:
    """Every way the tests spell the IPv4 address ``number``: dotted, decimal, hex, octal,
    the short forms, IPv4-mapped IPv6 (bracketed too), and padded with white space and a dot."""
    a, b, c, d = IPv4Address(number).packed
    return [
        str(IPv4Address(number)),
        str(number),
        hex(number),
        hex(number).upper().replace("0X", "0x"),
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        f"{hex(a)}.{b}.{c}.{d}",
        f"::ffff:{a}.{b}.{c}.{d}",
        f"[::ffff:{a}.{b}.{c}.{d}]",
        f"::FFFF:{(a << 8) | b:X}:{(c << 8) | d:X}",
        f" {a}.{b}.{c}.{d}. ",
    ]
