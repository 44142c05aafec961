"""The operator's verbs on an in-process Host (issue 14): detached tclets named by id, ``list``,
``kill``, ``wait``, ``logs`` (kept, tailed, followed with backpressure), ``dropped``, the bound on
ended tclets, id prefixes, and ``events`` followed live.

Real workers throughout; the host's own stdout is captured at the descriptor (``capfd``) to show
that a detached tclet writes nowhere but its log.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from support.audit import audit_records
from support.waiting import until

from tcletd.api import Host
from tcletd.host.ids import ID_RE, TcletIds
from tcletd.host.registry import ROW_KEYS, TcletTable
from tcletd.shared.errors import NoSuchTclet
from tcletd.shared.launch import RequestInvalid
from tcletd.shared.states import EXIT_KILLED, EXIT_TERMINATED

pytestmark = pytest.mark.timeout(60)

SLEEPER = "after 600000 {exit 0}"  # its script returns: idle in its event loop
# A printer of 3 MiB: 49152 numbered lines of 64 bytes, so a lost or repeated chunk shows.
LINES = 49152
PRINTER = (
    f"for {{set i 0}} {{$i < {LINES}}} {{incr i}} {{ puts [string repeat x 55][format %08d $i] }}"
)


def printed(lines: int) -> bytes:
    return b"".join(b"x" * 55 + b"%08d\n" % i for i in range(lines))


async def collect(chunks: Any) -> list[tuple[str, bytes]]:
    return [chunk async for chunk in chunks]


def test_a_detached_tclets_output_is_only_in_its_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> tuple[list[tuple[str, bytes]], int]:
        async with Host(audit=tmp_path / "audit.jsonl") as host:
            attached = host.launch("puts attached-line")
            detached = host.launch("puts detached-out; puts stderr detached-err", detached=True)
            await asyncio.gather(attached.wait(), detached.wait())
            return await collect(host.logs(detached.id)), (await host.wait(detached.id)).status

    logs, status = asyncio.run(scenario())
    out, err = capfd.readouterr()
    assert status == 0
    for stream, text in (("stdout", b"detached-out\n"), ("stderr", b"detached-err\n")):
        assert b"".join(d for s, d in logs if s == stream) == text
    assert "attached-line" in out  # what we capture is what an attached tclet writes
    assert "detached" not in out + err


def test_list_rows_running_and_ended(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]], str, str]:
        async with Host() as host:
            done = host.launch("exit 7", detached=True, script_name="seven.tcl")
            await done.wait()
            running = host.launch(SLEEPER, detached=True, policy="trusted")
            await until(lambda: running.state.value == "idle")
            live, every = host.list(), host.list(all=True)
            host.kill(running.id)
            return live, every, done.id, running.id

    live, every, done_id, running_id = asyncio.run(scenario())
    for row in live + every:
        assert tuple(row) == ROW_KEYS
    assert [r["id"] for r in live] == [running_id]
    assert live[0]["state"] == "idle" and live[0]["policy"] == "trusted"
    assert live[0]["status"] is None and live[0]["reason"] is None
    assert isinstance(live[0]["pid"], int) and isinstance(live[0]["age"], float)
    assert [r["id"] for r in every] == [done_id, running_id]
    ended = every[0]
    assert ended["state"] == "ended" and ended["script"] == "seven.tcl"
    assert (ended["status"], ended["reason"]) == (7, "exit")


@pytest.mark.parametrize(("signal", "status"), [("TERM", EXIT_TERMINATED), ("KILL", EXIT_KILLED)])
def test_kill_ends_a_tclet_for_the_operator(tmp_path: Path, signal: str, status: int) -> None:
    audit = tmp_path / "audit.jsonl"

    async def scenario() -> tuple[int, str, bool, str]:
        async with Host(audit=audit) as host:
            tclet = host.launch(SLEEPER, detached=True)
            await until(lambda: tclet.state.value == "idle")
            assert host.kill(tclet.id[:6], signal) == tclet.id
            result = await asyncio.wait_for(host.wait(tclet.id), 10)
            return result.status, result.reason, result.by_host, tclet.id

    got_status, reason, by_host, tclet_id = asyncio.run(scenario())
    assert (got_status, reason, by_host) == (status, "killed by operator", True)
    kills = audit_records(audit, "kill")
    assert [(k["tclet"], k["reason"], k["status"]) for k in kills] == [
        (tclet_id, "killed by operator", status)
    ]
    exits = audit_records(audit, "exit")
    assert [(e["tclet"], e["status"]) for e in exits] == [(tclet_id, status)]


def test_kill_refuses_an_ended_tclet_and_a_bad_signal() -> None:
    async def scenario() -> None:
        async with Host() as host:
            done = host.launch("exit 0", detached=True)
            await done.wait()
            with pytest.raises(NoSuchTclet, match=f"tclet {done.id} has already ended") as e:
                host.kill(done.id)
            assert e.value.exit_status == 1
            running = host.launch(SLEEPER, detached=True)
            with pytest.raises(
                RequestInvalid, match=re.escape("signal: expected TERM or KILL, got 'HUP'")
            ):
                host.kill(running.id, "HUP")
            assert running.id in [r["id"] for r in host.list()]  # a refused kill kills nothing

    asyncio.run(scenario())


def test_wait_on_an_ended_tclet_answers_at_once() -> None:
    async def scenario() -> tuple[int, str]:
        async with Host() as host:
            tclet = host.launch("exit 5", detached=True)
            await tclet.wait()
            result = await asyncio.wait_for(host.wait(tclet.id), 0.05)
            return result.status, result.reason

    assert asyncio.run(scenario()) == (5, "exit")


def test_logs_tail_takes_the_last_lines_of_each_stream() -> None:
    script = "foreach i {1 2 3 4 5} { puts out$i; puts stderr err$i }; puts -nonewline last"

    async def scenario() -> dict[str, list[tuple[str, bytes]]]:
        async with Host() as host:
            tclet = host.launch(script, detached=True)
            await tclet.wait()
            return {
                "tail2": await collect(host.logs(tclet.id, tail=2)),
                "tail0": await collect(host.logs(tclet.id, tail=0)),
                "stdout": await collect(host.logs(tclet.id, tail=1, streams=["stdout"])),
                "whole": await collect(host.logs(tclet.id, streams=["stderr"])),
            }

    got = asyncio.run(scenario())

    def joined(chunks: list[tuple[str, bytes]], stream: str) -> bytes:
        return b"".join(d for s, d in chunks if s == stream)

    assert joined(got["tail2"], "stdout") == b"out5\nlast"
    assert joined(got["tail2"], "stderr") == b"err4\nerr5\n"
    assert got["tail0"] == []
    assert got["stdout"] == [("stdout", b"last")]
    assert joined(got["whole"], "stderr") == b"".join(b"err%d\n" % i for i in range(1, 6))
    assert {s for s, _ in got["whole"]} == {"stderr"}


def test_a_slow_follower_gets_every_byte_and_holds_the_tclet() -> None:
    # keep_output far below what it prints: what the follower gets cannot come from the log
    async def scenario() -> tuple[bytes, list[bool], int]:
        async with Host(keep_output=64 * 1024) as host:
            tclet = host.launch(PRINTER, detached=True)
            got: list[bytes] = []
            running_while_slow: list[bool] = []
            n = 0
            async for stream, data in host.logs(tclet.id, follow=True):
                assert stream == "stdout"
                got.append(data)
                n += 1
                if n <= 4:  # a consumer that stops: the tclet cannot run ahead of it
                    await asyncio.sleep(0.4)
                    running_while_slow.append(tclet.id in [r["id"] for r in host.list()])
            return b"".join(got), running_while_slow, (await host.wait(tclet.id)).status

    data, running_while_slow, status = asyncio.run(scenario())
    assert status == 0
    assert len(data) == LINES * 64 == 3 << 20
    assert data == printed(LINES)
    assert running_while_slow == [True] * 4


def test_output_beyond_keep_output_is_dropped_and_counted() -> None:
    async def scenario() -> tuple[dict[str, int], bytes]:
        async with Host(keep_output=1000) as host:
            tclet = host.launch(
                "for {set i 0} {$i < 100} {incr i} { puts [string repeat y 99] }", detached=True
            )
            await tclet.wait()
            chunks = await collect(host.logs(tclet.id))
            return host.dropped(tclet.id[:5]), b"".join(d for _, d in chunks)

    dropped, kept = asyncio.run(scenario())
    assert dropped == {"stdout": 100 * 100 - 1000, "stderr": 0}
    assert kept == b"y" * 99 + b"\n" + (b"y" * 99 + b"\n") * 9
    assert len(kept) == 1000


def test_the_host_keeps_only_keep_ended_ended_tclets() -> None:
    async def scenario() -> tuple[list[str], list[dict[str, object]]]:
        async with Host(keep_ended=2) as host:
            ids = []
            for i in range(5):
                tclet = host.launch(f"exit {i}", detached=True)
                await tclet.wait()
                ids.append(tclet.id)
            with pytest.raises(NoSuchTclet, match=f"no such tclet: {ids[0]}"):
                await host.wait(ids[0])
            return ids, host.list(all=True)

    ids, rows = asyncio.run(scenario())
    assert [(r["id"], r["status"]) for r in rows] == [(ids[3], 3), (ids[4], 4)]


def test_a_prefix_names_a_tclet_and_a_bad_reference_is_one_line() -> None:
    async def scenario() -> None:
        async with Host() as host:
            tclet = host.launch(SLEEPER, detached=True)
            assert [r["id"] for r in host.list()] == [tclet.id]
            assert host.kill(tclet.id[:4]) == tclet.id
            assert (await host.wait(tclet.id[:4])).status == EXIT_TERMINATED
            other = "0000" if not tclet.id.startswith("0000") else "ffff"
            for ref, message in [
                (other, f"no such tclet: {other}"),
                (tclet.id[:3], f"no such tclet: {tclet.id[:3]} (give 4 digits or more)"),
                ("", "expected a tclet id"),
            ]:
                with pytest.raises(NoSuchTclet, match=re.escape(message)) as e:
                    await host.wait(ref)
                assert e.value.exit_status == 1 and "\n" not in str(e.value)
                with pytest.raises(NoSuchTclet):
                    host.logs(ref)

    asyncio.run(scenario())


def test_an_ambiguous_prefix_lists_what_it_matches() -> None:
    # Two ids sharing four digits need ~300 launches to occur by chance: the table is given them.
    first, second = object(), object()
    table = TcletTable({"abcd00000001": first, "abcd10000002": second})  # type: ignore[dict-item]
    assert table.find("abcd10000002") is second
    assert table.find("abcd0") is first
    with pytest.raises(NoSuchTclet, match="'abcd' is ambiguous: abcd00000001, abcd10000002") as e:
        table.find("abcd")
    assert e.value.exit_status == 1


def test_ids_are_twelve_hex_digits_and_unique() -> None:
    ids = TcletIds()
    made = [ids() for _ in range(100_000)]
    assert len(set(made)) == len(made)
    assert all(ID_RE.fullmatch(i) for i in made)
    # Not a plain count: about half of the steps go down (a count's none; random ids' two
    # sorted triples in a row, once checked here, come 1 time in 36).
    downs = sum(a > b for a, b in itertools.pairwise(made))
    assert len(made) // 4 < downs < 3 * len(made) // 4

    async def scenario() -> list[str]:
        async with Host() as host:
            tclets = [host.launch("exit 0", detached=True) for _ in range(20)]
            await asyncio.gather(*(t.wait() for t in tclets))
            return [str(r["id"]) for r in host.list(all=True)]

    live = asyncio.run(scenario())
    assert len(set(live)) == 20 and all(ID_RE.fullmatch(i) for i in live)


def test_events_follow_sees_a_new_tclets_launch_and_exit(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
        async with Host(audit=tmp_path / "audit.jsonl") as host:
            before = host.launch("exit 0", detached=True)
            await before.wait()
            seen: list[dict[str, Any]] = []
            records = host.events(follow=True)
            tclet_id = ""

            async def follow() -> None:
                async for record in records:
                    seen.append(record)
                    if record["event"] == "exit" and record.get("tclet") == tclet_id:
                        return

            follower = asyncio.ensure_future(follow())
            await until(lambda: any(r.get("tclet") == before.id for r in seen))  # the history
            tclet = host.launch("puts hi; exit 4", detached=True)
            tclet_id = tclet.id
            await asyncio.wait_for(follower, 20)
            only = [r async for r in host.events(tclet_id=tclet.id)]
            return seen, tclet_id, only

    seen, tclet_id, only = asyncio.run(scenario())
    mine = [r for r in seen if r.get("tclet") == tclet_id]
    assert mine[0]["event"] == "launch"
    assert (mine[-1]["event"], mine[-1]["status"]) == ("exit", 4)
    assert only and {r["tclet"] for r in only} == {tclet_id}
    assert [r["event"] for r in only] == [r["event"] for r in mine]
