"""Differential tests: every script in tests/tcl must behave the same under tclsh and tcletd.

tcletd hands each granted socket to the tclet as a native Tcl channel, so a tclet should not
be able to tell it is not in tclsh: same stdout, same exit status. Each script declares on a
``# needs:`` line the Python-side servers it wants (see ``support.net.SERVER_KINDS``); it gets
``127.0.0.1`` and then one port per server as its argv. An optional ``# status: N`` line
gives the exit status the script is written to end with (default 0).

stderr is not compared: error traces name the script file, and tcletd may add its own
diagnostics there. It is shown when a test fails.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from support import ROOT, TCL_DIR
from support.net import SERVER_KINDS, servers_for
from support.processes import Ran, run_bounded

SCRIPTS = sorted(TCL_DIR.glob("*.tcl"))
TCLSH = shutil.which("tclsh")

# Per process. The slowest script moves a few MiB over loopback and takes well under a
# second under tclsh; the margin is for tcletd start-up and a loaded CI box.
RUN_TIMEOUT = 45.0

needs_tclsh = pytest.mark.skipif(TCLSH is None, reason="tclsh is not installed")
# `tcletd run` is being built; until its module exists the comparison cannot run at all.
needs_runner = pytest.mark.skipif(
    importlib.util.find_spec("tcletd.cli.runner") is None,
    reason="tcletd.cli.runner not present yet",
)

CommandBuilder = Callable[[Path, Sequence[str]], list[str]]


def header(script: Path, key: str) -> str | None:
    """The value of a ``# key:`` line in the script's leading comment block."""
    for line in script.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        m = re.match(rf"#\s*{key}:(.*)$", line)
        if m:
            return m.group(1).strip()
    return None


def script_needs(script: Path) -> list[str]:
    value = header(script, "needs")
    if value is None:
        raise AssertionError(f"{script.name} has no '# needs:' line")
    return value.split()


def expected_status(script: Path) -> int:
    value = header(script, "status")
    return 0 if value is None else int(value)


def tclsh_cmd(script: Path, argv: Sequence[str]) -> list[str]:
    assert TCLSH is not None
    return [TCLSH, str(script), *argv]


def tcletd_cmd(script: Path, argv: Sequence[str]) -> list[str]:
    # "--" so that argv entries can never be taken for tcletd options.
    return [
        sys.executable,
        "-m",
        "tcletd",
        "run",
        "--policy",
        "trusted",
        str(script),
        "--",
        *argv,
    ]


def run_script(build: CommandBuilder, script: Path) -> Ran:
    """Run one script with fresh servers, so runs cannot leak state into each other."""
    with servers_for(script_needs(script)) as argv:
        return run_bounded(build(script, argv), RUN_TIMEOUT, cwd=ROOT)


def describe(label: str, result: Ran) -> str:
    timed_out = " (TIMED OUT, killed)" if result.timed_out else ""
    return f"--- {label}: exit {result.status}{timed_out}\n--- {label} stderr:\n{result.stderr}"


def stdout_diff(a: Ran, b: Ran, a_label: str, b_label: str) -> str:
    return "".join(
        difflib.unified_diff(
            a.stdout.splitlines(keepends=True),
            b.stdout.splitlines(keepends=True),
            fromfile=a_label,
            tofile=b_label,
        )
    )


script_params = pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])


def test_corpus_present() -> None:
    # Guards against a renamed directory silently parametrizing over nothing.
    assert len(SCRIPTS) >= 10


@script_params
def test_script_header(script: Path) -> None:
    for kind in script_needs(script):
        assert kind in SERVER_KINDS, f"{script.name}: unknown server kind {kind!r}"
    expected_status(script)


@needs_tclsh
@script_params
@pytest.mark.timeout(2 * RUN_TIMEOUT + 30)
def test_tclsh_is_deterministic(script: Path) -> None:
    """The reference side: two tclsh runs agree, and end with the declared status.

    A script whose output depends on timing or ports would make every differential
    failure ambiguous, so this runs (and must pass) even before tcletd can run tclets.
    """
    first = run_script(tclsh_cmd, script)
    second = run_script(tclsh_cmd, script)
    assert not first.timed_out, describe("tclsh", first)
    assert "watchdog" not in first.stderr, describe("tclsh", first)
    assert first.status == expected_status(script), describe("tclsh", first)
    assert first.stdout, "a script must print something to compare"
    assert (second.status, second.stdout) == (first.status, first.stdout), stdout_diff(
        first, second, "tclsh run 1", "tclsh run 2"
    ) + describe("tclsh run 2", second)


@needs_tclsh
@needs_runner
@script_params
@pytest.mark.timeout(2 * RUN_TIMEOUT + 30)
def test_tcletd_matches_tclsh(script: Path) -> None:
    native = run_script(tclsh_cmd, script)
    assert not native.timed_out, describe("tclsh", native)
    tclet = run_script(tcletd_cmd, script)
    assert not tclet.timed_out, describe("tcletd", tclet)
    diff = stdout_diff(native, tclet, "tclsh", "tcletd run")
    assert tclet.stdout == native.stdout, diff + describe("tcletd", tclet)
    assert tclet.status == native.status, describe("tclsh", native) + describe("tcletd", tclet)
