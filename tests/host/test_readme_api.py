"""The README's "Embedding (Python API)" examples run as written (so they cannot rot), and the
blocking wrapper (:class:`tcletd.api.BlockingHost`) behaves as its docstring says: off the main
thread, errors raised in the caller, iterators closed when left, a bounded wait.

Each example runs in a fresh Python process (its own host, zygote and workers) in a
temporary directory, killed by its process group on timeout.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import pytest
from support import ROOT
from support.processes import run_bounded

from tcletd.api import BlockingHost
from tcletd.shared.errors import NoSuchTclet
from tcletd.shared.states import TcletResult

pytestmark = pytest.mark.timeout(90)

SECTION = "## Embedding (Python API)"


def readme_examples() -> list[str]:
    """The ``python`` code blocks of the README's embedding section, in order."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)


def run_example(code: str, tmp_path: Path) -> str:
    script = tmp_path / "example.py"
    script.write_text(code)
    done = run_bounded([sys.executable, str(script)], timeout=60, cwd=tmp_path)
    assert not done.timed_out, done
    assert done.status == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def test_the_section_has_an_async_and_a_sync_example() -> None:
    examples = readme_examples()
    assert len(examples) == 2
    assert "async with Host(" in examples[0] and "asyncio.run(main())" in examples[0]
    assert "with BlockingHost(" in examples[1] and "async" not in examples[1]


def test_the_async_example_runs_as_written(tmp_path: Path) -> None:
    out = run_example(readme_examples()[0], tmp_path)
    assert re.match(r"hi from 8\.6\.\d+\n", out), out
    assert out.splitlines()[1:] == [
        "attached: 0 exit",
        "status: 3",
        "{'stdout': b'one\\n', 'stderr': b'two\\n'}",
        "running: True",
        "reason: killed by operator",
        "['launch', 'kill', 'exit']",
    ]
    assert (tmp_path / "audit.jsonl").stat().st_size > 0  # it wrote the audit log it named


def test_the_sync_example_runs_as_written(tmp_path: Path) -> None:
    out = run_example(readme_examples()[1], tmp_path)
    assert out.splitlines() == [
        "line 1",
        "line 2",
        "line 3",
        "status: 0",
        "TcletResult(status=137, reason='killed by operator', by_host=True)",
        "kept: 2",
    ]


def test_a_blocking_host_runs_off_the_main_thread_and_raises_in_the_caller() -> None:
    with BlockingHost(keep_output=4096) as host:
        loop_threads = [t for t in threading.enumerate() if t.name == "tcletd-host"]
        assert len(loop_threads) == 1 and loop_threads[0] is not threading.main_thread()
        assert host.run("puts hi; exit 2") == TcletResult(2, "exit")
        with pytest.raises(NoSuchTclet, match="no such tclet: 0000") as e:
            host.wait("0000")
        assert e.value.exit_status == 1
        with pytest.raises(NoSuchTclet):
            host.logs("0000")  # at the call, not at the first next()
        sleeper = host.launch("after 600000 {exit 0}")
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            host.wait(sleeper, timeout=0.3)
        assert time.monotonic() - started < 5
        assert [r["id"] for r in host.list()] == [sleeper]  # a timed-out wait kills nothing
        assert host.kill(sleeper[:5]) == sleeper
        assert host.wait(sleeper).status == 143
    assert not [t for t in threading.enumerate() if t.name == "tcletd-host"]
    with pytest.raises(RuntimeError, match="not started"):
        host.list()


def test_a_blocking_follower_left_early_lets_the_tclet_go_on() -> None:
    script = "for {set i 0} {$i < 20000} {incr i} { puts [string repeat z 99] }; exit 0"
    with BlockingHost() as host:
        tclet_id = host.launch(script)
        first = next(host.logs(tclet_id, follow=True))
        assert first[0] == "stdout" and first[1].startswith(b"z")
        records = host.events(follow=True, tclet_id=tclet_id)
        for record in records:
            if record["event"] == "exit":
                break
        records.close()  # the subscription is given back on the host's loop
        # The abandoned follower held the tclet only until it was let go: it ran to its end.
        assert host.wait(tclet_id, timeout=20) == TcletResult(0, "exit")
        assert host.dropped(tclet_id)["stdout"] > 0  # 2 MB printed, 1 MiB kept
