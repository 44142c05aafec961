"""Output callbacks for tclets launched on an in-process :class:`~tcletd.api.Host`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict


class Sinks(TypedDict):
    """``host.launch(..., **sinks)``: where a tclet's stdout and stderr go."""

    on_stdout: Callable[[bytes], None]
    on_stderr: Callable[[bytes], None]


def _drop(_data: bytes) -> None:
    pass


def quiet() -> Sinks:
    """Sinks that drop both streams."""
    return {"on_stdout": _drop, "on_stderr": _drop}
