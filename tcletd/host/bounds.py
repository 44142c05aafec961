"""The resident host's control endpoint, bounded: its limits, and whom it closes to keep them.

Host side of the trust boundary: what one client may take of the host that serves every client
(:mod:`tcletd.host.control` applies these). A flood of idle connections once took the host to
EMFILE; 40 half-sent 16 MiB frames took it from 33 to 689 MB; 20,000 status frames in one write
blocked its loop ~15 s. So connections are capped (a new one evicts the one that has waited
longest without completing a request; one running a tclet is never evicted), a frame has a
deadline, an idle connection too, the bytes held for incomplete frames are capped host-wide,
and a connection's frames are handled a few per loop turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar


@dataclass(frozen=True)
class Bounds:
    """What one resident host's control endpoint allows its clients."""

    max_connections: int = 256
    frame_deadline: float = 10.0  # seconds from a frame's first byte to its last
    idle_deadline: float = 30.0  # seconds a connection without a tclet may go without a request
    # Bytes of incomplete frames, host-wide: four 16 MiB scripts (MAX_SCRIPT) arriving at once.
    max_held: int = 64 * 1024 * 1024
    # Frames of one connection handled per loop turn. At 16, during 20,000-frame status floods a
    # neighbour tclet's connect took 1.3-2.9 ms at the median and 5.7-8.6 ms at most (0.7-1.4 ms
    # without the flood); handled all at once, one connect waited 3.1 s.
    per_turn: int = 16
    # Of one core, the host time one connection's requests may take (all connections together:
    # endpoint_share); a connection past either waits (tcletd.host.pacing). Under a status flood
    # on 2 cores, unpaced, a neighbour's echo p99 was 18 times its p99 alone. Both allowances
    # hold ``burst`` seconds: 500 launches at once (~0.4 ms of the host's each) go unpaced.
    client_share: float = 0.1
    burst: float = 0.5

    @property
    def endpoint_share(self) -> float:
        """Of one core, the host time all connections' requests may take: twice one's."""
        return min(1.0, 2 * self.client_share)

    @property
    def sweep_period(self) -> float:
        """Seconds between two looks for connections past a deadline."""
        return min(1.0, max(0.05, min(self.frame_deadline, self.idle_deadline) / 4))

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not value > 0:
                raise ValueError(f"control bounds: {name} must be more than 0, not {value!r}")


class Held:
    """Bytes held for incomplete frames across every connection of one endpoint."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0

    def move(self, held: int, now: int) -> str | None:
        """Count a connection's ``now`` bytes instead of its ``held``; if more would take the
        total past the cap, count nothing and say why (the connection fails, the others keep
        their buffers)."""
        if now > held and self.total - held + now > self.cap:
            return (
                f"the host holds {self.cap} bytes of incomplete frames, its most; "
                "this frame would take it past that"
            )
        self.total += now - held
        return None


class Slot(Protocol):
    """What the bounds need of a connection."""

    @property
    def closing(self) -> bool: ...
    @property
    def working(self) -> bool: ...
    @property
    def since(self) -> float: ...
    @property
    def frame_since(self) -> float | None: ...
    @property
    def idle(self) -> bool: ...


S = TypeVar("S", bound=Slot)


def victim_for(newcomer: S, slots: Iterable[S]) -> S | None:
    """The connection to evict for ``newcomer``: of those not running a tclet (nor leaving), the
    one that has waited longest without completing a request."""
    best: S | None = None
    for slot in slots:
        if slot is newcomer or slot.closing or slot.working:
            continue
        if best is None or slot.since < best.since:
            best = slot
    return best


def overdue(slot: Slot, bounds: Bounds, now: float) -> str | None:
    """Why ``slot`` must close now, if it must: a frame not complete ``frame_deadline`` after its
    first byte, or no request for ``idle_deadline`` on a connection without a tclet."""
    if slot.closing:
        return None
    if slot.frame_since is not None and now - slot.frame_since > bounds.frame_deadline:
        return f"frame not complete {bounds.frame_deadline:g} s after its first byte"
    # A frame in progress is governed by the frame deadline alone, else a connection whose first
    # byte came a moment after it connected would be closed as idle when both deadlines are near.
    if slot.idle and slot.frame_since is None and now - slot.since > bounds.idle_deadline:
        return f"idle: no request in {bounds.idle_deadline:g} s"
    return None
