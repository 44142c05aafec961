"""Sizes and durations as the host writes them (tcletd.policy.quantities)."""

from __future__ import annotations

from tcletd.policy.quantities import format_duration, format_size


def test_formatters() -> None:
    assert format_size(64 * 2**20) == "64 MiB"
    assert format_size(2**20) == "1 MiB"
    assert format_size(512 * 1024) == "512 KiB"
    assert format_size(100) == "100 B"
    assert format_duration(10.0) == "10 s"
    assert format_duration(0.25) == "0.25 s"
