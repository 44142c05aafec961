"""Fuzzing the resident host's control wire: arbitrary bytes, and well-framed messages with random
ops, fields, types and sizes, thrown at a real ``tcletd serve``. After each, the host must still
serve another client (a status answered; every few examples, a tiny run to its end), and its
resident memory must stay bounded (relative to before the first example).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.wire import Serving, connect, rss, serving, status, tiny_run

from tcletd.shared.control import RUN_FIELDS

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
# What the host may grow by over a whole fuzz run: its caps (64 MiB of incomplete frames at
# most) are far above what these examples send; this catches a leak per example.
GROWTH = 48 * MIB


class Fuzzed:
    def __init__(self, sock: Path, host: Serving) -> None:
        self.sock = sock
        self.host = host
        self.pid = host.pid
        self.baseline = rss(host.pid)
        self.examples = 0

    def send(self, data: bytes) -> None:
        """``data`` on a new connection, which is then closed (its tclet, if any, ends)."""
        with connect(self.sock) as conn:
            try:
                conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(0.2)
                while conn.recv(1 << 16):  # what the host says, until it hangs up or we stop
                    pass
            except OSError:
                pass  # it hung up on us (an error frame, then a close) or is slow to: either way

    def still_serves(self) -> None:
        self.examples += 1
        assert isinstance(status(self.sock, timeout=10), list)
        if self.examples % 10 == 0:
            tiny_run(self.sock)
        grown = rss(self.pid) - self.baseline
        assert grown < GROWTH, f"host grew by {grown} bytes over {self.examples} examples"


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    sock = tmp_path_factory.mktemp("fuzz") / "control.sock"
    with serving(sock, "--frame-deadline", "2s", "--idle-deadline", "2s") as host:
        tiny_run(sock)  # the first run warms the host: its growth is not the fuzz's
        yield Fuzzed(sock, host)
        tiny_run(sock)
        # Every bad frame was the client's error, none the host's.
        assert "Traceback" not in host.stderr() and "internal error" not in host.stderr()


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@FUZZ
@given(st.binary(max_size=8192))
def test_arbitrary_bytes(fuzzed: Fuzzed, data: bytes) -> None:
    fuzzed.send(data)
    fuzzed.still_serves()


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_arbitrary_lines(fuzzed: Fuzzed, lines: list[bytes]) -> None:
    fuzzed.send(b"\n".join(lines) + b"\n")
    fuzzed.still_serves()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
OPS = st.sampled_from(["run", "status", "signal", "drop"]) | JSON
KEYS = st.sampled_from([*RUN_FIELDS, "signum", "stream", "op"]) | st.text(max_size=10)
SCRIPTS = st.sampled_from(
    [b"puts ok", b"after 200", b"exit 3", b"while 1 {}", b"puts [string repeat x 100000]", b""]
) | st.binary(max_size=512)
# A frame's size as written: the payload's own, or a random claim (past it, negative, huge, not
# a number at all).
SIZES = st.none() | st.integers(min_value=-2, max_value=32 * MIB) | JSON


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {"op": draw(OPS), **draw(st.dictionaries(KEYS, JSON, max_size=5))}
    if draw(st.booleans()):
        header["signum"] = draw(st.sampled_from([2, 9, 10, 15, 1, 0, -1]))
    payload = draw(SCRIPTS)
    size = draw(SIZES)
    header["size"] = len(payload) if size is None else size
    if header["size"] == 0 and draw(st.booleans()):
        del header["size"]
    return json.dumps(header).encode() + b"\n" + payload


@settings(FUZZ, max_examples=120)
@given(st.lists(frames(), min_size=1, max_size=4))
def test_well_framed_messages(fuzzed: Fuzzed, messages: list[bytes]) -> None:
    fuzzed.send(b"".join(messages))
    fuzzed.still_serves()
