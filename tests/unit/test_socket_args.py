"""``socket``'s argument parsing in the worker (tcletd.worker.aliases), before any request."""

from __future__ import annotations

from tcletd.worker.aliases import parse_socket_args


def test_parse_socket_args() -> None:
    a = parse_socket_args(["-myaddr", "10.0.0.1", "-myport", "5000", "-async", "", "80"])
    assert (a.server, a.host, a.port, a.myaddr, a.myport, a.asynchronous) == (
        False,
        "",
        "80",
        "10.0.0.1",
        "5000",
        True,
    )
    s = parse_socket_args(["-server", "cb x", "-myport", "0", "-myaddr", "::1", "0"])
    assert (s.server, s.command, s.myaddr, s.port, s.myport) == (True, "cb x", "::1", "0", "")
