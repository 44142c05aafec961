"""The one-shot path stays lean: what ``tcletd run`` loads and does on the way in and out.

Each property here was measured as a cost of every run (bench/bench_oneshot.py); each test fails
if an eager import or a full teardown comes back, without timing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from support import EXAMPLES, ROOT

from tcletd.cli.commands import COMMANDS, build_parser

HELLO = str(EXAMPLES / "hello.tcl")


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )


def _modules_after(argv: list[str]) -> tuple[int, list[str], str]:
    """``main(argv)`` in a fresh interpreter: its status, the modules it loaded, its output."""
    code = (
        "import json, sys\n"
        "from tcletd.cli.main import main\n"
        f"status = main({argv!r})\n"
        "print('\\n' + json.dumps([status, sorted(sys.modules)]))\n"
    )
    done = _python(code, env={k: v for k, v in os.environ.items() if k != "TCLETD_HOST"})
    status, modules = json.loads(done.stdout.splitlines()[-1])
    return status, modules, done.stdout + done.stderr


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if m in prefixes or m.startswith(tuple(p + "." for p in prefixes))]


def test_a_run_sets_up_only_the_run_command_and_help_lists_them_all() -> None:
    run = build_parser(["run", "--host", "x.sock", HELLO])
    everything = build_parser(["--help"])
    [run_commands] = [a.choices for a in run._actions if a.dest == "command"]
    [all_commands] = [a.choices for a in everything._actions if a.dest == "command"]
    assert isinstance(run_commands, dict) and isinstance(all_commands, dict)
    assert list(run_commands) == ["run"]
    assert list(all_commands) == [c.name for c in COMMANDS]
    assert "--host" in run_commands["run"].format_help()


def test_a_run_on_a_resident_host_loads_no_argparse_extras_nor_the_runner(tmp_path: Path) -> None:
    status, modules, output = _modules_after(["run", "--host", str(tmp_path / "none.sock"), HELLO])
    assert status == 69, output  # no host there: the client got as far as connecting
    # shutil (bz2, lzma) came with argparse's terminal width; the rest with other commands.
    heavy = ("shutil", "asyncio", "tcletd.cli.runner", "tcletd.cli.policytool", "tcletd.cli.page")
    assert _loaded(modules, heavy) == []
    # Measured (bench/bench_oneshot.py, client CPU 31-33 -> 26-27 ms): socket's enums and
    # selectors, urllib.parse and ipaddress for the default origin's one quote, contextlib and
    # weakref for what only the host uses, the policy package for the help of another command.
    lean = ("socket", "selectors", "urllib", "ipaddress", "contextlib", "weakref", "tcletd.policy")
    assert _loaded(modules, lean) == []


def test_an_embedded_run_loads_neither_the_fetcher_nor_the_blocking_api() -> None:
    status, modules, output = _modules_after(["run", HELLO])
    assert status == 0 and "Hello from a tclet!" in output, output
    assert "tcletd.host.host" in modules  # the listing sees the host
    # c-ares (aiodns, pycares) comes with the first lookup: a tclet that looks no name up costs
    # its host no DNS library (15-17 ms of an embedded run's start).
    unneeded = ("http.client", "email", "tcletd.host.fetch", "tcletd.api", "tcletd.api_sync")
    assert _loaded(modules, (*unneeded, "aiodns", "pycares")) == []


# The program's entry in a fresh interpreter, with an audit hook that notes, when a process is
# started, what was imported by then; the zygote is the only process a run starts from the CLI.
_STARTS = textwrap.dedent(
    """
    import json, os, sys

    def hook(event, args):
        if event == "subprocess.Popen" and "tcletd.worker.zygote" in " ".join(args[1]):
            loaded = [m for m in ("argparse", "asyncio", "msgspec", "zmq", "tcletd.cli.commands")
                      if m in sys.modules]
            os.write(2, ("\\nZYGOTE " + json.dumps(loaded) + "\\n").encode())

    sys.addaudithook(hook)
    sys.argv = ["tcletd", *sys.argv[1:]]
    from tcletd.cli.main import entry

    entry()
    """
)


def _zygote_starts(argv: list[str], env: dict[str, str] | None = None) -> list[list[str]]:
    """``tcletd ARGV`` as the program runs it: for each zygote it started, what was imported
    before that start."""
    done = subprocess.run(
        [sys.executable, "-c", _STARTS, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    starts = [json.loads(line[7:]) for line in done.stderr.splitlines() if line[:7] == "ZYGOTE "]
    assert isinstance(starts, list)
    return starts


def test_an_embedded_run_starts_its_zygote_before_parsing_its_command_line() -> None:
    # Measured: the zygote's start (~85 ms alone, 100-200 ms beside the host on 2 cores) is
    # most of a one-shot run; it began 40 ms in, after argparse and the command table.
    env = {k: v for k, v in os.environ.items() if k != "TCLETD_HOST"}
    assert _zygote_starts(["run", HELLO], env=env) == [[]]
    # Told apart without the parser: the options that may mean a resident host, and help.
    assert _zygote_starts(["run", "--policy", "home", "--", HELLO], env=env) == [[]]


def test_a_run_that_may_be_resident_or_help_starts_no_zygote_early(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    env = {k: v for k, v in os.environ.items() if k != "TCLETD_HOST"}
    for argv in (
        ["run", "--host", sock, HELLO],
        ["run", "--ho", sock, HELLO],  # argparse takes an abbreviation of --host too
        ["run", f"--host={sock}", HELLO],
        ["run", "--help"],
        ["run", HELLO, "-h"],
    ):
        assert _zygote_starts(argv, env=env) == [], argv
    assert _zygote_starts(["run", HELLO], env={**env, "TCLETD_HOST": sock}) == []


_EXIT_CODE = textwrap.dedent(
    """
    import atexit, os, sys, threading, time
    from tcletd.cli.exiting import exit_now

    class Teardown:
        def __del__(self) -> None:
            os.write(1, b"teardown\\n")

    kept = Teardown()  # freed only by the interpreter's teardown of __main__
    atexit.register(lambda: print("atexit ran"))
    if sys.argv[1] == "thread":
        threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
    print("buffered")  # a pipe: block-buffered until the exit flushes it
    exit_now(7)
    """
)


def _exit_now(mode: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", _EXIT_CODE, mode],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def test_exit_now_skips_the_teardown_but_not_the_atexit_handlers_nor_the_output() -> None:
    done = _exit_now("alone")
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == ["buffered", "atexit ran"], done.stdout


def test_exit_now_waits_for_a_live_thread_as_the_interpreter_does() -> None:
    done = _exit_now("thread")
    assert done.returncode == 7, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["buffered", "thread done", "atexit ran"], done.stdout
    assert "teardown" in lines  # the interpreter's own exit, teardown included


def test_the_program_and_python_m_tcletd_exit_through_exit_now() -> None:
    main = (ROOT / "tcletd" / "__main__.py").read_text()
    assert "entry()" in main
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tcletd = "tcletd.cli.main:entry"' in pyproject


def test_the_seccomp_library_is_found_without_a_subprocess() -> None:
    # ctypes.util.find_library runs `ldconfig -p` per name: 3.5 ms of every zygote's start.
    code = textwrap.dedent(
        """
        import sys

        def hook(event, args):
            if event == "subprocess.Popen":
                print("POPEN", list(args[1]))

        sys.addaudithook(hook)
        from tcletd.worker import seccomp

        print("UNAVAILABLE", repr(seccomp.unavailable))
        """
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["UNAVAILABLE ''"], done.stdout
