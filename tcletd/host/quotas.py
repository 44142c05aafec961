"""Quotas: what one tclet may hold, open, move and print, and what the whole host may hold.

Host side of the trust boundary. Every number here is measured by the host itself, never taken
from a worker: socket slots are counted as the host grants and frees them, connects as the host
admits them, bytes from the kernel's own counters on the host's duplicate of each descriptor,
output as the host reads it from the worker's socketpairs.

- **sockets**: connected plus listening sockets a tclet holds (a wildcard listen is one slot
  though the host holds an IPv4 and an IPv6 socket for it); a close frees the slot at once. The
  host-wide total (``Host(max_sockets=...)``) is checked the same way.
- **connects_per_second**: connect requests the host admitted in the last second (a sliding 1 s
  window); a request refused by this quota is not counted, one refused by the policy is (a scan
  of closed ports is still a scan).
- **lookups_per_second**: name lookups the host made for the tclet in the last second (a sliding
  1 s window), counted only when the policy needed the name's addresses.
- **bytes_sent / bytes_received**: from ``getsockopt(IPPROTO_TCP, TCP_INFO)`` on the host's
  duplicate, read by offset in Linux's ``struct tcp_info`` (``include/uapi/linux/tcp.h``, stable
  ABI since Linux 4.1): ``tcpi_bytes_acked`` (``__u64`` at byte 120: bytes the peer acknowledged,
  so sent-and-delivered; the kernel counts the SYN and a FIN as one byte each) and
  ``tcpi_bytes_received`` (``__u64`` at byte 128). Polled by the
  watchdog for the tclet's open sockets and read a last time when the tclet closes one.
- **send_rate**: kernel pacing, ``setsockopt(SOL_SOCKET, SO_MAX_PACING_RATE, bytes/s)`` on the
  duplicate before hand-over; it is per socket (the kernel knows no per-process rate). It takes
  effect with the fq qdisc or, since Linux 4.13, TCP's internal pacing, which also paces
  loopback (measured: 4 MiB at 1 MiB/s acknowledged in 3.6 s; unpaced in 0.02 s).
- **output_bytes**: stdout plus stderr, counted as the host reads them. Unlimited by default:
  output is a stream the host relays with backpressure and never buffers
  (:mod:`tcletd.host.output`), so its volume costs the host no memory.

A request over a quota is refused with :class:`QuotaRefused`, a Tcl error that names the quota
and its value (``too many open sockets (limit 8)``) and changes nothing else.

What a worker enforces on itself as backstops (its descriptor, address-space and CPU rlimits,
its Tcl command budget) comes from here too: :func:`ceilings` at launch, :func:`granted` when a
``policy NAME`` moves them.
"""

from __future__ import annotations

import collections
import contextlib
import resource
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tcletd.policy import Origin, Policy, known_policies, load_policy
from tcletd.policy.master import MasterConfig
from tcletd.policy.quantities import Quotas, format_size, worker_ceilings, worker_limits
from tcletd.shared import protocol as p
from tcletd.shared.errors import EXIT_TEMPFAIL, ConfigError, RequestError, TcletdError

# struct tcp_info offsets (see the module docstring); ask for more than we read.
TCP_INFO_LEN = 256
_TCPI_BYTES_ACKED = 120
_TCPI_BYTES_RECEIVED = 128
_TCPI_END = 136
# asm-generic value (Linux >= 3.13); Python's socket module does not export it.
SO_MAX_PACING_RATE: int = getattr(socket, "SO_MAX_PACING_RATE", 47)
_INT_MAX = 2**31 - 1
_U64_MAX = 2**64 - 1

CONNECT_WINDOW = 1.0  # seconds
# A tclet whose requests keep being refused (a quota or the policy) more than REFUSALS_PER_SECOND
# times a second gets each further refusal only after REFUSAL_PAUSE: its worker waits, so a loop
# of refused requests costs the host (and the machine) a few dozen answers a second, not
# thousands.
REFUSALS_PER_SECOND = 50
REFUSAL_PAUSE = 0.05  # seconds


class QuotaRefused(RequestError):
    """A request over a quota; the tclet sees ``message`` as its Tcl error."""

    def __init__(self, quota: str, limit: float, value: float, message: str) -> None:
        super().__init__(message, ("TCLETD", "QUOTA", quota, f"{limit:g}"))
        self.quota = quota
        self.limit = limit
        self.value = value


class HostFull(TcletdError):
    """Launching a tclet past the host's worker total (``Host(max_workers=...)``)."""

    exit_status = EXIT_TEMPFAIL


def sockets_message(limit: float, *, host: bool = False) -> str:
    where = " on this host" if host else ""
    return f"too many open sockets{where} (limit {limit:g})"


def workers_message(limit: int) -> str:
    return f"too many tclets on this host (limit {limit})"


# What a tclet costs the host in descriptors besides its sockets' duplicates (one each): while
# its launch is on its way, both ends of its three socketpairs and its spec's memfd; once
# forked, its three ends, its worker's pidfd and its ROUTER connection.
DESCRIPTORS_STARTING = 7
DESCRIPTORS_PER_TCLET = 5
# A warm child handed to the host ahead of its launch: its socket end, its pidfd and the ROUTER
# connection it made ahead.
DESCRIPTORS_PER_WARM = 3
# Kept free below the limit, for what the host opens for a moment (a policy file, a lookup's
# socket, connections accepted in one turn before they are admitted): this many, or an eighth
# of a smaller limit's, at least 16. It is not slack but a guard: libzmq 4.3's IPC listener
# aborts the whole host process (an assertion in ipc_listener.cpp) when a worker's connection
# arrives while the host is at its limit, so neither a launch nor a control client may take
# the host into this margin.
DESCRIPTORS_MARGIN = 128


def descriptors_margin(limit: int) -> int:
    return min(DESCRIPTORS_MARGIN, max(16, limit // 8))


def descriptor_limit() -> int | None:
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if limit == resource.RLIM_INFINITY else limit


def descriptors_held(totals: HostTotals, limit: int) -> int:
    """What the host holds by its own count, the margin included: its tclets (as they cost
    while starting and once forked), their sockets, its warm children, its control clients and
    what it held when it started (``own``: stdio, the zygote's socket, libzmq's and the loop's
    own, the audit log)."""
    return (
        (totals.workers - totals.starting) * DESCRIPTORS_PER_TCLET
        + totals.starting * DESCRIPTORS_STARTING
        + totals.sockets
        + totals.warm * DESCRIPTORS_PER_WARM
        + totals.control
        + totals.own
        + descriptors_margin(limit)
    )


def control_room(totals: HostTotals, ahead: int) -> bool:
    """Whether the control endpoint, holding ``totals.control`` descriptors (the newest
    included) and about to accept up to ``ahead`` more before it counts again, leaves the host
    its margin and room to start a tclet; when not, the newest must evict or be refused (idle
    clients cannot lock launches out)."""
    limit = descriptor_limit()
    if limit is None:
        return True
    return descriptors_held(totals, limit) + ahead + DESCRIPTORS_STARTING <= limit


def descriptors_short(totals: HostTotals) -> str | None:
    """Why one more tclet would take the host past its descriptor limit, or None: refused
    here, before a descriptor it needs (a socketpair, a pidfd, a connection libzmq accepts in
    its own thread) fails somewhere a refusal cannot be said as clearly, or aborts the host."""
    limit = descriptor_limit()
    if limit is None:
        return None
    held = descriptors_held(totals, limit)
    if held + DESCRIPTORS_STARTING <= limit:
        return None
    return (
        f"the host is out of file descriptors (its limit is {limit}; {totals.workers} tclets "
        f"and {totals.sockets} sockets hold about {held}): a tclet costs it "
        f"{DESCRIPTORS_PER_TCLET} ({DESCRIPTORS_STARTING} while it starts), and one more per "
        "socket; try again when tclets have ended"
    )


def bytes_message(quota: str, limit: int) -> str:
    what = "bytes sent" if quota == "bytes_sent" else "bytes received"
    return f"{what} quota exceeded (limit {format_size(limit)}): sockets shut down"


def output_reason(limit: float) -> str:
    return f"output quota {format_size(limit)}"


def tcp_bytes(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes acknowledged by the peer, bytes received) from the kernel; None if unavailable."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCPI_END:
        return None  # a kernel older than 4.1 has no byte counters
    acked: int = struct.unpack_from("=Q", info, _TCPI_BYTES_ACKED)[0]
    received: int = struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0]
    return acked, received


def set_pacing(sock: socket.socket, rate: int) -> bool:
    """Cap the socket's sending rate (bytes per second) in the kernel; False where unsupported."""
    # The kernel reads 32 bits from an int-sized option and 64 from a long-sized one (>= 4.20).
    value: int | bytes = rate if rate <= _INT_MAX else struct.pack("=Q", min(rate, _U64_MAX))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, value)
    except OSError:
        return False
    return True


def _recent(window: collections.deque[float], now: float) -> collections.deque[float]:
    """``window`` without the times older than CONNECT_WINDOW (a sliding one-second window)."""
    while window and window[0] <= now - CONNECT_WINDOW:
        window.popleft()
    return window


def _admit(
    window: collections.deque[float], now: float, quota: str, what: str, quotas: Quotas
) -> None:
    """Count one request of a per-second quota, or refuse it without counting."""
    _recent(window, now)
    limit = getattr(quotas, quota)
    if len(window) >= limit:
        message = f"too many {what} per second (limit {limit:g})"
        raise QuotaRefused(quota, limit, len(window), message)
    window.append(now)


@dataclass
class HostTotals:
    """Host-wide counters, shared by every tclet of one Host."""

    max_workers: int
    max_sockets: int
    workers: int = 0
    sockets: int = 0
    starting: int = 0  # of the workers, those whose fork has not come yet
    warm: int = 0  # the warm pool's size: children forked ahead, DESCRIPTORS_PER_WARM each
    control: int = 0  # connections the resident host's control endpoint holds, one each
    own: int = 0  # descriptors the host held when it started, before any tclet


@dataclass
class _Meter:
    sock: socket.socket
    sent: int = 0
    received: int = 0

    def read(self) -> None:
        counts = tcp_bytes(self.sock)
        if counts is not None:
            # Counters only grow; keep the larger value so a failed read never loses bytes.
            self.sent = max(self.sent, counts[0])
            self.received = max(self.received, counts[1])


class TcletQuotas:
    """One tclet's quota state: slots, recent connects, byte meters and output."""

    def __init__(self, quotas: Quotas, totals: HostTotals) -> None:
        self.quotas = quotas
        self.totals = totals
        self.open = 0
        self.output = 0
        # The message of the byte quota that shut the tclet's sockets down ("" while none has).
        self.revoked = ""
        self.pacing = True
        self._connects: collections.deque[float] = collections.deque()
        self._lookups: collections.deque[float] = collections.deque()
        self._refusals: collections.deque[float] = collections.deque()
        self._meters: dict[int, _Meter] = {}
        self._closed_sent = 0
        self._closed_received = 0

    # ---- slots and connects -------------------------------------------------------------------

    def take_slot(self) -> None:
        """Count one more socket for the tclet and the host, or refuse without counting."""
        limit = self.quotas.sockets
        if self.open >= limit:
            raise QuotaRefused("sockets", limit, self.open, sockets_message(limit))
        host_limit = self.totals.max_sockets
        if self.totals.sockets >= host_limit:
            raise QuotaRefused(
                "host_sockets",
                host_limit,
                self.totals.sockets,
                sockets_message(host_limit, host=True),
            )
        self.open += 1
        self.totals.sockets += 1

    def free_slot(self) -> None:
        if self.open > 0:
            self.open -= 1
            self.totals.sockets -= 1

    def free_all(self) -> None:
        self.totals.sockets -= self.open
        self.open = 0

    def admit_connect(self, now: float) -> None:
        """Count a connect in the sliding window, or refuse it without counting."""
        _admit(self._connects, now, "connects_per_second", "connects", self.quotas)

    def admit_lookup(self, now: float) -> None:
        """Count a name lookup in the sliding window, or refuse it without counting. Called
        only when the policy needs the name's addresses (a denied name costs no lookup)."""
        _admit(self._lookups, now, "lookups_per_second", "lookups", self.quotas)

    def refusal_pause(self, now: float) -> float:
        """Count a refused request; how long its refusal waits (0 unless the tclet keeps at it)."""
        window = _recent(self._refusals, now)
        window.append(now)
        return REFUSAL_PAUSE if len(window) > REFUSALS_PER_SECOND else 0.0

    def check_revoked(self) -> None:
        """After a byte quota shut the tclet's sockets down, every new socket is refused."""
        if self.revoked:
            quota = "bytes_sent" if self.revoked.startswith("bytes sent") else "bytes_received"
            limit = getattr(self.quotas, quota)
            raise QuotaRefused(quota, limit, self._value(quota), self.revoked)

    # ---- bytes --------------------------------------------------------------------------------

    def track(self, sock_id: int, sock: socket.socket) -> None:
        """Meter a connected socket about to be handed over, and pace it."""
        self._meters[sock_id] = _Meter(sock)
        if self.pacing and self.quotas.send_rate:
            self.pacing = set_pacing(sock, int(self.quotas.send_rate))

    def untrack(self, sock_id: int) -> None:
        """The last read of a socket's counters, before the host closes its duplicate."""
        meter = self._meters.pop(sock_id, None)
        if meter is not None:
            meter.read()
            self._closed_sent += meter.sent
            self._closed_received += meter.received

    def poll(self) -> None:
        """Read the kernel's counters of every open socket (bounded by the socket quota)."""
        for meter in self._meters.values():
            meter.read()

    @property
    def bytes_sent(self) -> int:
        return self._closed_sent + sum(m.sent for m in self._meters.values())

    @property
    def bytes_received(self) -> int:
        return self._closed_received + sum(m.received for m in self._meters.values())

    def _value(self, quota: str) -> int:
        return self.bytes_sent if quota == "bytes_sent" else self.bytes_received

    def over_bytes(self) -> tuple[str, int, int] | None:
        """(quota, limit, value) of the first byte quota exceeded, once; None otherwise."""
        if self.revoked:
            return None
        for quota in ("bytes_sent", "bytes_received"):
            limit: int = getattr(self.quotas, quota)
            value = self._value(quota)
            if value > limit:
                self.revoked = bytes_message(quota, limit)
                return quota, limit, value
        return None

    def shut_down(self) -> None:
        """Revoke every connected socket: both directions, for the tclet's descriptor too."""
        for meter in self._meters.values():
            with contextlib.suppress(OSError):
                meter.sock.shutdown(socket.SHUT_RDWR)

    # ---- output -------------------------------------------------------------------------------

    def add_output(self, n: int) -> int:
        """Count ``n`` bytes of output; how many of them fit in the quota (all of them when it
        is unlimited: ``min`` with infinity)."""
        room = max(0, self.quotas.output_bytes - self.output)
        self.output += n
        return int(min(n, room))

    @property
    def over_output(self) -> bool:
        return self.output > self.quotas.output_bytes


# ---- what a worker enforces on itself -------------------------------------------------------


def grant_refusal(
    name: str, origin: Origin, master: MasterConfig, directory: Path | None = None
) -> str | None:
    """Why a tclet from ``origin`` may not be granted policy ``name`` by asking for it, or None
    if it may: only a policy the host knows (the operator's ``directory``, then the shipped
    ones), by name (never a path, whatever the master config's globs say), and only where the
    master config allows it."""
    if name not in known_policies(directory):
        return "unknown policy"
    return None if master.allows(name, origin) else "master config"


def granted(req: int, policy: Policy) -> p.PolicyGranted:
    """The answer to a granted ``policy NAME``: what it hides and what the worker enforces."""
    return p.PolicyGranted(
        req,
        policy.name,
        list(policy.hidden_options),
        **worker_limits(policy.quotas, policy.limits),
    )


def ceilings(
    policy: Policy,
    fixed: bool,
    master: MasterConfig,
    origin: Origin,
    overrides: Sequence[str],
    directory: Path | None = None,
) -> dict[str, Any]:
    """A new worker's hard rlimits (WorkerSpec's ``*_max``): the most of every policy its tclet
    may still be granted (``policy NAME``, per the master config, among the operator's
    ``directory`` and the shipped ones), so that its limits can follow a grant. Empty for a
    fixed policy: its own limits are the ceiling."""
    if fixed:
        return {}
    grantable = [policy]
    for name in known_policies(directory):
        if name == policy.name or grant_refusal(name, origin, master, directory) is not None:
            continue
        try:
            grantable.append(load_policy(name, directory).with_overrides(*overrides))
        except ConfigError:
            # An operator's broken file: a grant of it is refused (and audited) when asked
            # for, so it raises no ceiling, and it must not stop every other launch.
            continue
    return worker_ceilings([(g.quotas, g.limits) for g in grantable])
