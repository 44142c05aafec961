"""The worker's link is connected before the sandbox (which refuses new sockets) closes down:
libzmq makes the connection's socket in its I/O thread after ``connect`` returned, and a worker
sandboxed first could never reach its host (it waited for ever before its hello, about one
launch in a hundred in a burst of fifty on ``tcletd serve``). Real ZeroMQ over ``ipc://``."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import zmq
from support.runtime import make_spec

from tcletd.worker.link import Link

pytestmark = pytest.mark.timeout(120)


def test_the_link_waits_for_its_connection(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/hub"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        link = Link(make_spec("", endpoint=endpoint), theirs)
        assert link.wait_connected(timeout=10)
        assert link.wait_connected(timeout=0.01)  # once is enough: the monitor is gone
    finally:
        router.close(linger=0)
        ctx.term()
        ours.close()


def test_the_link_says_so_when_no_host_answers(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        link = Link(make_spec("", endpoint=f"ipc://{tmp_path}/nobody"), theirs)
        started = time.monotonic()
        assert not link.wait_connected(timeout=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        ours.close()
