"""Pacing the control endpoint's clients: how much of the host's time their requests may take.

Host side of the trust boundary, facing the operator's clients (:mod:`tcletd.host.connection`
applies it). A client that sends requests as fast as the host answers them (``status`` in bursts
of 200 on four connections) kept the host's loop and its own process answering and reading, and
a neighbour tclet's echo round trips took 18 times as long at the 99th percentile on 2 cores.
Handling a few frames per loop turn keeps the loop responsive but not the machine: the cores are
still spent. So each connection has an allowance of the host's time, a token bucket in seconds
refilled at its share of one core, and the endpoint has one for all its connections; a connection
over either waits with its reading paused (in line for the endpoint's, see
:class:`Endpoint`). Its requests stay in its socket meanwhile, so a client
that waits for its answers (as every flooder must, or be cut off for not reading them) waits too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

# Seconds of allowance a request costs at least. Its answer costs the machine more than the
# host's part (the client decoding it, the kernel's copies), and a cheap request in a flood must
# still be paced: at a share of 0.1 a connection gets 100 requests a second past its burst.
REQUEST_COST = 0.001
# Beyond the exact refill time, so that the turn it was due for finds the allowance positive.
_ROUNDING = 1e-4


class Allowance:
    """A token bucket in seconds of host time: ``share`` of a core, ``burst`` seconds at most."""

    def __init__(self, share: float, burst: float, now: float) -> None:
        if not share > 0 or not burst > 0:
            raise ValueError(f"allowance: share {share} and burst {burst} must be more than 0")
        self.share = share
        self.burst = burst
        self._left = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._left = min(self.burst, self._left + (now - self._at) * self.share)
            self._at = now

    def charge(self, seconds: float, now: float) -> None:
        """Take ``seconds`` of host time spent (it may go below nothing: the debt waits)."""
        self._refill(now)
        self._left -= seconds

    def due(self, now: float) -> float:
        """Seconds until something is left to spend; 0 if something is now."""
        self._refill(now)
        if self._left > 0:
            return 0.0
        return -self._left / self.share + _ROUNDING

    def left(self, now: float) -> float:
        """Seconds left to spend now (below 0: owed)."""
        self._refill(now)
        return self._left


class Peers:
    """What each client process (its pid, as the kernel gave it at connect) has spent of the
    host's time, over all its connections: the order of the endpoint's line. A client is a
    process, not a connection: one that opens a connection per request (a launch storm of 300
    attached runs) would otherwise have each of them first in line, as fresh as an operator's
    ``ps``, and the tool's watch (a ``status`` every 50 ms) waited behind such a storm's launches
    for up to 2.3 s on 2 cores; in the unit's test, 0.48 s behind 100 fresh connections."""

    def __init__(self, share: float, burst: float) -> None:
        self.share, self.burst = share, burst
        self._held: dict[int, tuple[Allowance, int]] = {}  # pid: its spending, its connections

    def take(self, pid: int, now: float) -> Allowance:
        """The spending of process ``pid``, for one more of its connections."""
        spent, connections = self._held.get(pid) or (Allowance(self.share, self.burst, now), 0)
        self._held[pid] = (spent, connections + 1)
        return spent

    def give_back(self, pid: int) -> None:
        """One of ``pid``'s connections is gone (its last: the process is forgotten)."""
        held = self._held.get(pid)
        if held is not None:
            if held[1] > 1:
                self._held[pid] = (held[0], held[1] - 1)
            else:
                del self._held[pid]

    def clients(self) -> int:
        """How many processes have a connection (not ``__len__``: an empty registry would be
        false, and ``peers or Peers()`` would make one per connection)."""
        return len(self._held)


class Waiter(Protocol):
    """A connection, as the endpoint's line sees it."""

    def left(self, now: float) -> float:
        """Seconds left of its client's allowance (all its process's connections)."""

    def go(self) -> None:
        """Handle its frames now: its turn in the line has come."""


class Endpoint:
    """The allowance all the endpoint's connections share. Past it, connections wait in line,
    and when it refills the one whose client has the most of its allowance left goes first
    (:class:`Peers`): a client that asks little (an operator's ``ps``) is not held behind a
    flood that spends its own, on one connection or hundreds (the first in line first among a
    client's)."""

    def __init__(self, share: float, burst: float, now: float) -> None:
        self.allowance = Allowance(share, burst, now)
        self._line: dict[Waiter, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def admits(self, waiter: Waiter, now: float) -> bool:
        """Whether ``waiter`` may go now; if not, it is in line (its ``go`` is called later)."""
        if not self._line and self.allowance.due(now) == 0:
            return True
        self._line[waiter] = None
        if self._timer is None:
            delay = self.allowance.due(now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._next)
        return False

    def charge(self, seconds: float, now: float) -> None:
        self.allowance.charge(seconds, now)

    def forget(self, waiter: Waiter) -> None:
        """``waiter`` is gone: out of the line."""
        self._line.pop(waiter, None)

    def _next(self) -> None:
        self._timer = None
        now = time.monotonic()
        while self._line and self.allowance.due(now) == 0:
            first = max(self._line, key=lambda w: w.left(now))
            del self._line[first]
            first.go()
            now = time.monotonic()
        if self._line:
            delay = self.allowance.due(now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._next)


def cost(spent: float, requests: int) -> float:
    """What handling ``requests`` frames in ``spent`` seconds of host time is charged."""
    return max(spent, requests * REQUEST_COST)
