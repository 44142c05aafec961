"""The report of ``tcletd attack``: its types, its JSON form, its table, progress bar and plot.

Client side of the trust boundary. The report is written by the tool from what it measured
itself, but a report read back with :func:`from_json` is untrusted input: it is validated field
by field and every string it carries is shown as plain text (never as rich markup or
matplotlib mathtext), so a hostile name or finding can neither restyle the table nor break the
plot. The field names are the JSON format documented in ``docs/attack.md``.

rich and matplotlib are imported inside the functions that use them: importing this module
(as ``tcletd attack`` does before anything runs) costs only msgspec. matplotlib is optional
(``pip install 'tcletd[plot]'``); without it :func:`plot` raises :class:`PlotUnavailable`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import msgspec

if TYPE_CHECKING:
    import rich.console
    import rich.progress

HOSTS = ("embedded", "resident")
BASELINE_KEYS = ("busy_others", "steal", "probe_p50_us", "probe_p99_us")
PLOT_HINT = "--plot needs matplotlib: pip install 'tcletd[plot]'"
ALL_TOGETHER = "all_together"
# A latency range wider than this factor is drawn on a log scale: a probe stalled for seconds
# would otherwise flatten every ordinary round trip into the axis.
LOG_SCALE_RANGE = 20.0
DASH = "\N{EN DASH}"
TIMES = "\N{MULTIPLICATION SIGN}"
NONE_SHOWN = DASH  # a figure that was not measured (no probe, no control endpoint)


class PlotUnavailable(RuntimeError):
    """``--plot`` was asked for but matplotlib is not installed."""


class AttackResult(msgspec.Struct):
    """One attack's outcome (or ``all_together``'s), over all of its rounds."""

    name: str
    contained: bool
    ended_by: str
    status: int | None
    seconds: float
    probe_p99_ratio: float | None
    control_p99_ms: float | None
    leftover_fds: int
    leftover_procs: int
    why: str  # the judge's finding, with its figure
    stopped_by: list[str]  # the catalogue header's expectation
    ratio_min: float | None
    ratio_max: float | None
    rounds: int
    skipped: str | None = None  # why it did not run (then contained is true and excluded)
    spans: list[tuple[float, float]] = []  # (start, end) seconds since the run's start, per round


class Lever(msgspec.Struct):
    """A knob whose effect on the probe was measured (name, p99 ratio, what it showed)."""

    name: str
    ratio: float | None
    note: str


class Report(msgspec.Struct):
    """The whole run: the verdict, the honest-baseline check, each attack, the probe timeline."""

    policy: str
    host: str  # "embedded" | "resident"
    contained: bool
    baseline_ok: bool
    baseline: dict[str, float]  # busy_others, steal, probe_p50_us, probe_p99_us
    baseline_note: str  # why the latency verdict was withheld, or ""
    attacks: list[AttackResult]  # each alone, then one named "all_together"
    timeline: list[tuple[float, float]]  # (seconds since start, probe round trip µs)
    version: str
    started: str
    seconds: float
    quick: bool


# ---- JSON ---------------------------------------------------------------------------------------


def to_json(report: Report) -> bytes:
    """The report as indented JSON, ending with a newline."""
    return msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n"


def from_json(data: bytes | str, *, source: str = "attack report") -> Report:
    """A report read back from JSON, validated; ValueError names ``source`` and the bad field
    (``$.attacks[2].seconds``) and what was wrong with it."""
    try:
        report = msgspec.json.decode(data, type=Report)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{source}: {_name_the_key(data, str(exc))}") from None
    except msgspec.DecodeError as exc:
        raise ValueError(f"{source}: not valid JSON: {exc}") from None
    problem = _check(report)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return report


def _name_the_key(data: bytes | str, message: str) -> str:
    """msgspec says ``$.baseline[...]`` for a bad value in the baseline mapping: name its key."""
    if not message.endswith("`$.baseline[...]`"):
        return message
    try:
        baseline = msgspec.json.decode(data).get("baseline")
    except (msgspec.DecodeError, AttributeError):
        return message
    for key, value in baseline.items() if isinstance(baseline, dict) else ():
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"`$.baseline.{key}` is {json_text(value)}, expected a number"
    return message


def json_text(value: object) -> str:
    """A decoded JSON value as JSON again, cut short: for messages about bad input."""
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _check(report: Report) -> str:
    """What the types cannot say is wrong with a decoded report, or ""."""
    if report.host not in HOSTS:
        return f"`$.host` is {report.host!r}, expected one of {', '.join(HOSTS)}"
    numbers: list[tuple[str, float | None]] = [("$.seconds", report.seconds)]
    numbers += [(f"$.baseline.{key}", value) for key, value in report.baseline.items()]
    for index, (when, micros) in enumerate(report.timeline):
        numbers += [(f"$.timeline[{index}][0]", when), (f"$.timeline[{index}][1]", micros)]
    for index, attack in enumerate(report.attacks):
        where = f"$.attacks[{index}]"
        numbers += [
            (f"{where}.seconds", attack.seconds),
            (f"{where}.probe_p99_ratio", attack.probe_p99_ratio),
            (f"{where}.control_p99_ms", attack.control_p99_ms),
            (f"{where}.ratio_min", attack.ratio_min),
            (f"{where}.ratio_max", attack.ratio_max),
            (f"{where}.leftover_fds", attack.leftover_fds),
            (f"{where}.leftover_procs", attack.leftover_procs),
            (f"{where}.rounds", attack.rounds),
        ]
        for span_index, (start, end) in enumerate(attack.spans):
            if end < start:
                return f"`{where}.spans[{span_index}]` ends ({end}) before it starts ({start})"
            numbers += [(f"{where}.spans[{span_index}][0]", start)]
    for where, value in numbers:
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"`{where}` is {value}, expected a finite number >= 0"
    return ""


# ---- the table ----------------------------------------------------------------------------------


def verdict_word(attack: AttackResult) -> str:
    """``skipped``, ``contained`` or ``NOT CONTAINED``: the table's verdict column."""
    if attack.skipped is not None:
        return "skipped"
    return "contained" if attack.contained else "NOT CONTAINED"


def _number(value: float | None, digits: int) -> str:
    return NONE_SHOWN if value is None else f"{value:.{digits}f}"


def _ratio_cell(attack: AttackResult) -> str:
    if attack.probe_p99_ratio is None:
        return NONE_SHOWN
    text = f"{attack.probe_p99_ratio:.2f}{TIMES}"
    if attack.rounds > 1 and attack.ratio_min is not None and attack.ratio_max is not None:
        text += f" ({attack.ratio_min:.2f}{DASH}{attack.ratio_max:.2f})"
    return text


def _ended_cell(attack: AttackResult) -> str:
    if attack.status is None:
        return attack.ended_by or NONE_SHOWN
    return f"{attack.ended_by} (exit {attack.status})"


def baseline_line(report: Report) -> str:
    """The line above the table: policy, host, and what the honest baseline measured."""
    base = report.baseline
    busy = base.get("busy_others")
    steal = base.get("steal")
    p99 = base.get("probe_p99_us")
    parts = [
        f"policy {report.policy}",
        f"host {report.host}",
        "baseline: busy others "
        + (NONE_SHOWN if busy is None else f"{busy:.2f} core")
        + ", steal "
        + (NONE_SHOWN if steal is None else f"{steal:.1%}")
        + ", probe p99 alone "
        + (NONE_SHOWN if p99 is None else f"{p99:.0f} µs"),
    ]
    if report.quick:
        parts.append("quick")
    return " · ".join(parts)


def overall_line(report: Report) -> str:
    """The line below the table: the run's verdict and which attacks were not contained."""
    ran = [a for a in report.attacks if a.skipped is None]
    skipped = len(report.attacks) - len(ran)
    failed = [a.name for a in ran if not a.contained]
    tail = f" ({skipped} skipped)" if skipped else ""
    if report.contained and not failed:
        return f"CONTAINED: all {len(ran)} attacks were contained{tail}"
    if failed:
        return f"NOT CONTAINED: {len(failed)} of {len(ran)} attacks: {', '.join(failed)}{tail}"
    return f"NOT CONTAINED{tail}"


def render_table(report: Report, console: rich.console.Console) -> None:
    """Print the baseline line, one row per attack and the overall verdict to ``console``.
    Every string of the report is printed as plain text: none is read as rich markup."""
    from rich.table import Table
    from rich.text import Text

    console.print(Text(baseline_line(report)))
    if not report.baseline_ok:
        note = report.baseline_note or "the baseline was not honest"
        console.print(Text(f"no latency verdict: {note}", style="bold"))
    table = Table(show_lines=False, expand=False)
    table.add_column("attack", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("ended by", overflow="fold")
    table.add_column("s", justify="right", no_wrap=True)
    table.add_column(f"probe p99 {TIMES}alone", justify="right", no_wrap=True)
    table.add_column("control p99 ms", justify="right", no_wrap=True)
    table.add_column("leftovers fds/procs", justify="right", no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1, min_width=24)
    styles = {"contained": "green", "NOT CONTAINED": "bold red", "skipped": "dim"}
    for attack in report.attacks:
        word = verdict_word(attack)
        if attack.skipped is not None:  # it did not run: there are no figures to show
            figures = [NONE_SHOWN] * 5 + [attack.skipped]
        else:
            figures = [
                _ended_cell(attack),
                _number(attack.seconds, 1),
                _ratio_cell(attack),
                _number(attack.control_p99_ms, 1),
                f"{attack.leftover_fds}/{attack.leftover_procs}",
                attack.why,
            ]
        table.add_row(
            Text(attack.name, style="bold" if attack.name == ALL_TOGETHER else ""),
            Text(word, style=styles[word]),
            *(Text(figure) for figure in figures),
        )
    console.print(table)
    overall = overall_line(report)
    console.print(Text(overall, style="bold green" if overall[0] == "C" else "bold red"))


# ---- progress -----------------------------------------------------------------------------------


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """A transient progress bar ``attack i of n: NAME`` with the run's elapsed time.

    Prints nothing at all when ``stream`` is not a terminal (a pipe, a file, a CI log): the
    table and the JSON are the record; the bar is only company for a person watching."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = max(total, 0)
        self.stream = stream
        self.enabled = _is_terminal(stream)
        self.index = 0
        self._bar: rich.progress.Progress | None = None
        self._task: rich.progress.TaskID | None = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("attack {task.fields[number]} of {task.total:.0f}:"),
                TextColumn("{task.fields[attack]}", markup=False),
                BarColumn(),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("attacks", total=self.total, attack="", number=0)
        return self

    def next(self, name: str) -> None:
        """Attack ``name`` starts now: the bar shows it as number i of n."""
        self.index += 1
        self.total = max(self.total, self.index)  # one more than announced is still shown
        if self._bar is not None and self._task is not None:
            # The bar counts the attacks finished; the text names the one running.
            self._bar.update(
                self._task,
                total=self.total,
                completed=self.index - 1,
                attack=name,
                number=self.index,
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None


# ---- the plot -----------------------------------------------------------------------------------


def _uses_log_scale(micros: Sequence[float]) -> bool:
    positive = [m for m in micros if m > 0]
    if len(positive) != len(micros) or not positive:
        return False
    return max(positive) / min(positive) > LOG_SCALE_RANGE


def plot(report: Report, path: Path) -> None:
    """Write a PNG to ``path``: the probe's round trips over time, each attack's rounds shaded
    and labelled with its name and what ended it, and the policy and verdict as its title.
    Raises :class:`PlotUnavailable` (with the install hint) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401  (first: a missing parent fails before any submodule)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotUnavailable(PLOT_HINT) from None

    # A Figure on its own Agg canvas, not pyplot: no global backend or figure state is touched.
    figure = Figure(figsize=(14, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    times = [when for when, _ in report.timeline]
    micros = [round_trip for _, round_trip in report.timeline]
    if report.timeline:
        axes.plot(times, micros, linewidth=0.6, marker=".", markersize=2, color="tab:blue")
        if _uses_log_scale(micros):
            axes.set_yscale("log")
    else:
        axes.text(0.5, 0.5, "no probe samples", transform=axes.transAxes, ha="center",
                  parse_math=False)  # fmt: skip
    shades = ("tab:gray", "tab:orange")
    for number, attack in enumerate(report.attacks):
        colour = "tab:red" if attack.skipped is None and not attack.contained else None
        for start, end in attack.spans:
            axes.axvspan(start, end, alpha=0.15, color=colour or shades[number % 2], linewidth=0)
            label = attack.name + (f": {attack.ended_by}" if attack.ended_by else "")
            axes.text(
                start,
                0.98,
                label,
                transform=axes.get_xaxis_transform(),
                rotation=90,
                va="top",
                ha="left",
                fontsize=7,
                color=colour or "black",
                clip_on=True,
                parse_math=False,  # a `$` in a name or reason is text, not mathtext
            )
    axes.set_xlabel("seconds since start")
    axes.set_ylabel("probe round trip (µs)")
    verdict = "contained" if report.contained else "NOT CONTAINED"
    axes.set_title(
        f"tcletd attack · policy {report.policy} · {report.host} host · {verdict}",
        parse_math=False,
    )
    figure.savefig(path, format="png")
