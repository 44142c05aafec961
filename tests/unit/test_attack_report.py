"""The attack report (tcletd.attack.report): its JSON form and validation, its table, its
progress bar off a terminal, and its plot with and without matplotlib."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console
from support import ROOT

from tcletd.attack import report as attack_report
from tcletd.attack.report import (
    PLOT_HINT,
    AttackResult,
    PlotUnavailable,
    Progress,
    Report,
    from_json,
    plot,
    render_table,
    to_json,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _attack(name: str, **changes: Any) -> AttackResult:
    fields: dict[str, Any] = {
        "name": name,
        "contained": True,
        "ended_by": "cpu",
        "status": -15,
        "seconds": 10.4,
        "probe_p99_ratio": 1.3,
        "control_p99_ms": 2.5,
        "leftover_fds": 0,
        "leftover_procs": 0,
        "why": "ended by the cpu limit after 10.0 s of CPU",
        "stopped_by": ["cpu", "commands"],
        "ratio_min": 1.1,
        "ratio_max": 1.6,
        "rounds": 3,
        "spans": [(1.0, 11.4), (12.0, 22.5), (23.0, 33.3)],
    }
    fields.update(changes)
    return AttackResult(**fields)


def _report(**changes: Any) -> Report:
    fields: dict[str, Any] = {
        "policy": "home",
        "host": "embedded",
        "contained": False,
        "baseline_ok": True,
        "baseline": {"busy_others": 0.02, "steal": 0.0, "probe_p50_us": 80.0, "probe_p99_us": 150},
        "baseline_note": "",
        "attacks": [
            _attack("busy_loop"),
            _attack(
                "socket_loop",
                contained=False,
                ended_by="deadline",
                status=None,
                probe_p99_ratio=None,
                why="the echo server held 40 connections at once (quota 8)",
                spans=[(34.0, 54.0)],
                rounds=1,
            ),
            _attack("bypass_ports", skipped="needs low-port: port 25 cannot be bound", spans=[]),
            _attack("all_together", ended_by="deadline", spans=[(60.0, 80.0)], rounds=1),
        ],
        # Round trips from 60 µs to 40 ms: the plot's log scale is exercised too.
        "timeline": [(t / 2, 60.0 + (40_000.0 if t % 37 == 0 else t)) for t in range(170)],
        "version": "0.9.0",
        "started": "2026-12-06T12:00:00Z",
        "seconds": 85.0,
        "quick": False,
    }
    fields.update(changes)
    return Report(**fields)


# ---- JSON ---------------------------------------------------------------------------------------


def test_json_round_trip() -> None:
    report = _report()
    data = to_json(report)
    assert from_json(data) == report
    assert from_json(data.decode()) == report
    # The field names are the documented format, not Python's spelling of them.
    decoded = json.loads(data)
    assert set(decoded) == {
        "policy", "host", "contained", "baseline_ok", "baseline", "baseline_note", "attacks",
        "timeline", "version", "started", "seconds", "quick",
    }  # fmt: skip
    assert decoded["attacks"][2]["skipped"].startswith("needs low-port")
    assert decoded["attacks"][0]["spans"][0] == [1.0, 11.4]


def test_missing_field_is_named() -> None:
    decoded = json.loads(to_json(_report()))
    del decoded["attacks"][1]["leftover_fds"]
    with pytest.raises(ValueError, match=r"leftover_fds.*\$\.attacks\[1\]"):
        from_json(json.dumps(decoded).encode())
    decoded["attacks"][1]["leftover_fds"] = 0
    del decoded["policy"]
    with pytest.raises(ValueError, match="missing required field `policy`"):
        from_json(json.dumps(decoded).encode())


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("attacks", 0, "seconds"), "ten", r"\$\.attacks\[0\]\.seconds"),
        (("attacks", 3, "contained"), "yes", r"\$\.attacks\[3\]\.contained"),
        (("baseline", "steal"), None, r"\$\.baseline\.steal"),
        (("timeline", 4), [1.0], r"\$\.timeline\[4\]"),
        (("host",), "elsewhere", r"\$\.host.*embedded, resident"),
        (("attacks", 1, "seconds"), -3.0, r"\$\.attacks\[1\]\.seconds.*>= 0"),
        (("attacks", 0, "spans", 1), [5.0, 2.0], r"\$\.attacks\[0\]\.spans\[1\]. ends"),
    ],
)
def test_wrong_value_is_named(path: tuple[str | int, ...], value: object, named: str) -> None:
    decoded = json.loads(to_json(_report()))
    holder = decoded
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = value
    with pytest.raises(ValueError, match=named):
        from_json(json.dumps(decoded).encode(), source="run.json")
    with pytest.raises(ValueError, match=r"^run\.json: "):
        from_json(json.dumps(decoded).encode(), source="run.json")


def test_not_json_is_rejected() -> None:
    with pytest.raises(ValueError, match="attack report: not valid JSON"):
        from_json(b'{"policy": "home"')


# ---- the table ----------------------------------------------------------------------------------


def _printed(report: Report) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    render_table(report, console)
    return console.export_text()


def test_table_shows_each_attack_and_verdict() -> None:
    text = _printed(_report())
    lines = text.splitlines()
    assert lines[0].startswith("policy home · host embedded · baseline: busy others 0.02 core")
    assert "probe p99 alone 150 µs" in lines[0]
    rows = {name: next(line for line in lines if name in line) for name in (
        "busy_loop", "socket_loop", "bypass_ports", "all_together")}  # fmt: skip
    assert "contained" in rows["busy_loop"] and "NOT" not in rows["busy_loop"]
    assert "cpu (exit -15)" in rows["busy_loop"]
    assert "1.30\N{MULTIPLICATION SIGN} (1.10\N{EN DASH}1.60)" in rows["busy_loop"]
    assert "0/0" in rows["busy_loop"]
    assert "NOT CONTAINED" in rows["socket_loop"]
    assert "40 connections" in text
    assert "skipped" in rows["bypass_ports"] and "needs low-port" in text
    assert "10.4" not in rows["bypass_ports"]  # no figures for an attack that did not run
    assert "contained" in rows["all_together"]
    assert lines[-1] == "NOT CONTAINED: 1 of 3 attacks: socket_loop (1 skipped)"
    assert "no latency verdict" not in text


def test_table_shows_the_baseline_note_when_not_ok() -> None:
    note = "others kept 0.61 of a core busy (at most 0.25)"
    text = _printed(_report(baseline_ok=False, baseline_note=note))
    assert f"no latency verdict: {note}" in text
    contained = [_attack("busy_loop"), _attack("all_together")]
    last = _printed(_report(contained=True, attacks=contained)).splitlines()[-1]
    assert last == "CONTAINED: all 2 attacks were contained"


def test_table_prints_hostile_strings_as_text() -> None:
    report = _report(attacks=[_attack("[bold red]x[/]", why="[link=file:///etc]y[/link] $x$")])
    text = _printed(report)
    assert "[bold red]x[/]" in text and "[link=file:///etc]y[/link] $x$" in text


# ---- progress -----------------------------------------------------------------------------------


def test_progress_off_a_terminal_prints_nothing() -> None:
    stream = io.StringIO()
    with Progress(3, stream) as progress:
        for name in ("busy_loop", "socket_loop", "all_together", "one_more"):
            progress.next(name)
    assert stream.getvalue() == ""
    assert progress.enabled is False and progress.index == 4


@pytest.mark.timeout(30)
def test_progress_on_a_terminal_shows_the_attack() -> None:
    """The same bar on a pseudo-terminal does draw: the silence above is a decision, not an
    accident of the stream."""
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as stream:
            with Progress(2, stream) as progress:
                progress.next("busy_loop")
            stream.flush()
        os.set_blocking(leader, False)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            drawn += chunk
        assert progress.enabled
        assert b"attack 1 of 2:" in drawn and b"busy_loop" in drawn
    finally:
        os.close(leader)
        os.close(follower)


# ---- the plot -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "run.png"
    plot(_report(), path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    empty = tmp_path / "empty.png"
    plot(_report(timeline=[], attacks=[_attack("a$b_c$", ended_by="$\\frac{")]), empty)
    assert empty.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_without_matplotlib_gives_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "run.png"
    with pytest.raises(PlotUnavailable) as raised:
        plot(_report(), path)
    assert str(raised.value) == "--plot needs matplotlib: pip install 'tcletd[plot]'"
    assert str(raised.value) == PLOT_HINT
    assert not path.exists()


def test_importing_the_report_loads_neither_rich_nor_matplotlib() -> None:
    code = (
        "import sys, tcletd.attack.report\n"
        "print(sorted(m for m in ('rich', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
    assert attack_report.__name__ == "tcletd.attack.report"


def test_the_json_fields_are_documented() -> None:
    """docs/attack.md's two field tables list exactly the report's fields, in order."""
    section = (ROOT / "docs" / "attack.md").read_text().split("## The JSON report", 1)[1]
    tables = section.split("Each element of `attacks`:", 1)
    documented = [
        [line.split("`")[1] for line in part.splitlines() if line.startswith("| `")]
        for part in tables
    ]
    fields = [[f.encode_name for f in msgspec.structs.fields(t)] for t in (Report, AttackResult)]
    assert documented == fields
