"""The host's per-tclet quota book-keeping, in process (tcletd.host.quotas): refusal pacing and
byte counts read from TCP_INFO on a duplicate of a real loopback socket."""

from __future__ import annotations

import socket

from support.net import TcpServer, echo_handler

from tcletd.host.quotas import (
    REFUSAL_PAUSE,
    REFUSALS_PER_SECOND,
    SO_MAX_PACING_RATE,
    HostTotals,
    TcletQuotas,
    tcp_bytes,
)
from tcletd.policy.quantities import Quotas


def test_refusals_are_paced_only_for_a_tclet_that_keeps_at_it() -> None:
    quotas = TcletQuotas(Quotas(), HostTotals(max_workers=1, max_sockets=8))
    now = 100.0
    pauses = [quotas.refusal_pause(now + i * 0.001) for i in range(REFUSALS_PER_SECOND + 5)]
    assert pauses[:REFUSALS_PER_SECOND] == [0.0] * REFUSALS_PER_SECOND
    assert pauses[REFUSALS_PER_SECOND:] == [REFUSAL_PAUSE] * 5
    assert quotas.refusal_pause(now + 2.0) == 0.0  # the window moved on: no pause


def test_tcp_info_counts_bytes_on_a_duplicate() -> None:
    with TcpServer(echo_handler) as echo:
        sock = socket.create_connection(("127.0.0.1", echo.port))
        dup = sock.dup()
        sock.sendall(b"a" * 10000)
        got = 0
        while got < 10000:
            got += len(sock.recv(65536))
        counts = tcp_bytes(dup)
        assert counts is not None
        # tcpi_bytes_acked also counts the SYN (and a FIN) as one sequence number each.
        assert 10000 <= counts[0] <= 10002 and counts[1] == 10000
        dup.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, 12345)
        sock.close()
        dup.close()
