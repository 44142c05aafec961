"""The control endpoint's pure parts: configuration files read only when regular and small, a run
request names its policy by name, the frame reader one frame at a time, and who is evicted or
closed at a deadline (:mod:`tcletd.host.bounds`), and the allowance of the host's time each
connection is paced by (:mod:`tcletd.host.pacing`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tcletd.cli.options import share
from tcletd.host.bounds import Bounds, Held, overdue, victim_for
from tcletd.host.pacing import Allowance, Endpoint, Peers, cost
from tcletd.policy.files import MAX_CONFIG_BYTES, UnreadableError, read_toml
from tcletd.policy.store import known_policies, load_policy
from tcletd.shared.control import FrameError, FrameReader, encode
from tcletd.shared.errors import UnknownPolicyError
from tcletd.shared.launch import RequestInvalid, decode_run

ROOT = Path(__file__).resolve().parents[2]


# ---- configuration files ------------------------------------------------------------------------


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "p.toml"
    os.mkfifo(fifo)  # no writer: a plain open() waits for one forever (the test's timeout)
    with pytest.raises(UnreadableError, match="a FIFO, not a regular file"):
        load_policy(fifo)


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/dev/zero", "a character device"), ("/", "a directory")],
)
def test_a_device_or_directory_is_refused_unread(path: str, kind: str) -> None:
    with pytest.raises(UnreadableError, match=f"{kind}, not a regular file"):
        read_toml(path)


def test_a_symlink_and_an_oversized_file_are_refused(tmp_path: Path) -> None:
    link = tmp_path / "link.toml"
    link.symlink_to(ROOT / "policies" / "home.toml")
    with pytest.raises(UnreadableError, match="a symbolic link"):
        load_policy(link)
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * (MAX_CONFIG_BYTES // 4 + 1))
    with pytest.raises(UnreadableError, match=f"larger than {MAX_CONFIG_BYTES} bytes"):
        read_toml(big)


def test_a_policy_path_is_the_operators_and_a_name_may_come_from_their_directory(
    tmp_path: Path,
) -> None:
    assert load_policy(ROOT / "policies" / "inside.toml").name == "inside"
    (tmp_path / "mine.toml").write_text((ROOT / "policies" / "inside.toml").read_text())
    assert load_policy("mine", tmp_path).name == "mine"
    assert "mine" in known_policies(tmp_path) and "mine" not in known_policies()
    with pytest.raises(UnknownPolicyError, match='unknown policy "mine"'):
        load_policy("mine")
    with pytest.raises(UnknownPolicyError):
        load_policy("master")  # the master config is not a policy


@pytest.mark.parametrize("policy", ["/dev/zero", "policies/home", "home.toml", "../x"])
def test_a_run_request_may_not_name_a_policy_by_path(policy: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        decode_run({"op": "run", "policy": policy}, b"puts hi")
    assert str(info.value).startswith("run request: policy: expected the name of a policy")
    assert info.value.exit_status == 2


def test_a_run_request_names_a_policy() -> None:
    assert decode_run({"op": "run", "policy": "trusted"}, b"").policy == "trusted"


# ---- the frame reader ---------------------------------------------------------------------------


def test_the_reader_gives_one_frame_at_a_time_and_says_what_it_holds() -> None:
    reader = FrameReader(16)
    reader.push(encode({"op": "status"}) * 3 + b'{"op":"run","size":4}\nab')
    taken = [reader.next() for _ in range(3)]
    assert taken == [({"op": "status"}, b"")] * 3
    assert reader.next() is None
    assert (reader.partial, reader.buffered) == (True, 2)
    reader.push(b"cd")
    assert reader.next() == ({"op": "run", "size": 4}, b"abcd")
    assert (reader.partial, reader.buffered) == (False, 0)
    with pytest.raises(FrameError, match=r"frame size: expected 0\.\.16, got 17"):
        list(reader.feed(b'{"size":17}\n'))


# ---- bounds -------------------------------------------------------------------------------------


@dataclass
class _Slot:
    since: float
    closing: bool = False
    working: bool = False
    frame_since: float | None = None
    idle: bool = True


def test_the_victim_is_the_one_waiting_longest_without_a_tclet() -> None:
    new, old, older, busy, leaving = (
        _Slot(9.0),
        _Slot(5.0),
        _Slot(3.0, frame_since=3.5),
        _Slot(1.0, working=True, idle=False),
        _Slot(0.0, closing=True),
    )
    assert victim_for(new, [busy, leaving, old, older, new]) is older
    assert victim_for(new, [busy, leaving, new]) is None  # every other one works: refuse


def test_deadlines_close_a_slow_frame_and_an_idle_connection() -> None:
    bounds = Bounds(frame_deadline=10, idle_deadline=30)
    assert overdue(_Slot(0.0, frame_since=1.0), bounds, 11.5) == (
        "frame not complete 10 s after its first byte"
    )
    assert overdue(_Slot(0.0), bounds, 29.0) is None
    assert overdue(_Slot(0.0), bounds, 31.0) == "idle: no request in 30 s"
    assert overdue(_Slot(0.0, working=True, idle=False), bounds, 1000.0) is None


def test_bounds_refuse_what_would_disable_them() -> None:
    with pytest.raises(ValueError, match="max_connections must be more than 0"):
        Bounds(max_connections=0)
    with pytest.raises(ValueError, match="frame_deadline must be more than 0"):
        Bounds(frame_deadline=0.0)


def test_the_host_wide_cap_fails_the_connection_that_would_pass_it() -> None:
    held = Held(100)
    assert held.move(0, 60) is None and held.total == 60
    refusal = held.move(0, 50)  # a second connection: 110 would pass the cap
    assert refusal is not None and refusal.startswith("the host holds 100 bytes of incomplete")
    assert held.total == 60  # nothing counted for it; the first keeps its bytes
    assert held.move(60, 10) is None and held.move(0, 50) is None and held.total == 60


def test_a_symlink_to_a_policy_already_loaded_is_still_refused(tmp_path: Path) -> None:
    # The loader caches compiled policies; a link must not reach the cached target's entry.
    assert load_policy(ROOT / "policies" / "home.toml").name == "home"
    link = tmp_path / "link.toml"
    link.symlink_to(ROOT / "policies" / "home.toml")
    with pytest.raises(UnreadableError, match="a symbolic link"):
        load_policy(link)


def test_an_allowance_spends_its_burst_then_refills_at_its_share() -> None:
    allowance = Allowance(share=0.25, burst=0.5, now=0.0)
    assert allowance.due(0.0) == 0.0
    allowance.charge(cost(0.0001, 600), now=0.0)  # 600 cheap requests count 1 ms each
    assert allowance.left(0.0) == pytest.approx(-0.1)
    assert allowance.due(0.0) == pytest.approx(0.4, abs=0.001)  # 0.1 s owed at 0.25 a second
    assert allowance.due(0.5) == 0.0
    allowance.charge(cost(0.2, 1), now=0.5)  # one slow request counts its own time
    assert allowance.left(0.5) == pytest.approx(0.025 - 0.2)
    assert allowance.due(1000.0) == 0.0 and allowance.left(1000.0) == 0.5  # never above the burst


def test_serve_refuses_a_share_that_is_not_part_of_a_core() -> None:
    for bad in ("0", "1.5", "-0.1", "a quarter", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="share of one core"):
            share(bad)
    assert share("0.25") == 0.25 and share("1") == 1.0


def test_past_the_endpoints_allowance_the_connection_that_asked_least_goes_first() -> None:
    class _Client:
        def __init__(self, name: str, own: float, order: list[str]) -> None:
            self.name, self.own, self.order = name, own, order

        def left(self, now: float) -> float:
            return self.own

        def go(self) -> None:
            self.order.append(self.name)
            endpoint.charge(0.05, time.monotonic())  # each turn spends the endpoint's refill

    async def main() -> list[str]:
        order: list[str] = []
        flooders = [_Client(f"flood{i}", -0.1 * i, order) for i in range(4)]
        quiet = _Client("quiet", 0.5, order)
        endpoint.charge(1.0, time.monotonic())  # spent: everyone queues
        for client in [*flooders, quiet]:
            assert not endpoint.admits(client, time.monotonic())
        endpoint.forget(flooders[3])  # gone: never called
        while len(order) < 4:
            await asyncio.sleep(0.05)
        return order

    endpoint = Endpoint(share=1.0, burst=0.05, now=time.monotonic())
    assert asyncio.run(asyncio.wait_for(main(), 10)) == ["quiet", "flood0", "flood1", "flood2"]


def test_a_processs_connections_share_its_spending_until_the_last_is_gone() -> None:
    peers = Peers(share=0.1, burst=0.5)
    now = time.monotonic()
    first, second, other = peers.take(100, now), peers.take(100, now), peers.take(200, now)
    assert first is second and first is not other and peers.clients() == 2
    first.charge(0.6, now)
    assert second.left(now) < 0 < other.left(now)
    peers.give_back(100)
    assert peers.clients() == 2  # one of its connections is left
    peers.give_back(100)
    peers.give_back(999)  # never seen: nothing to do
    assert peers.clients() == 1
    assert peers.take(100, now).left(now) == 0.5  # a pid seen again is a client anew
