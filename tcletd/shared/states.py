"""The vocabulary of a tclet's life, shared by host, worker and CLI.

Both sides of the trust boundary import it; the host never trusts a state a worker reports
beyond displaying it: limits are enforced from what the host measures itself.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field


class TcletState(str, enum.Enum):
    """What a tclet is doing, as the host knows it."""

    STARTING = "starting"  # launched, no hello yet
    SCRIPT = "script"  # evaluating its script (it reports only from its event loop: vwait/update)
    IDLE = "idle"  # its script returned; waiting in its event loop
    BUSY = "busy"  # silent for a while, not resting: blocked in I/O or computing, not returning
    ENDING = "ending"  # the host asked it to end
    ENDED = "ended"


# How long without a heartbeat before the host calls a tclet BUSY: a worker beats every
# HEARTBEAT_INTERVAL while active. One resting in its event loop (nothing ran for an interval,
# nothing left to do) says so and is silent, not busy, until its loop wakes and says so first.
HEARTBEAT_INTERVAL = 0.2
BUSY_AFTER = 1.0

# Exit statuses the host gives a tclet it ended (the reason text is in the audit log and on
# the CLI's stderr). A wall-clock limit follows coreutils timeout(1).
EXIT_WALL_LIMIT = 124
EXIT_KILLED = 137
EXIT_TERMINATED = 143


def signal_ending(signum: int) -> tuple[str, int]:
    """The reason and status of a tclet ended because tcletd (or its client) got ``signum``."""
    return f"tcletd got {signal.Signals(signum).name}", 128 + signum


@dataclass(frozen=True)
class TcletResult:
    """How a tclet ended: its exit status, why, and whether the host ended it."""

    status: int
    reason: str
    # Not part of equality: a result reads as (status, reason); this says who decided it.
    by_host: bool = field(default=False, compare=False)
