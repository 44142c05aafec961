"""The attack catalogue: NAME.tcl files with a ``# key: value`` header, loaded strictly, every
error naming the file (and line and key) (tcletd.attack.catalogue)."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tcletd.attack import catalogue
from tcletd.attack.catalogue import (
    ARGV_KEYS,
    JUDGES,
    KNOWN_KEYS,
    MAX_FILE_BYTES,
    REQUIRED_KEYS,
    STOPPERS,
    Attack,
    CatalogueError,
    load_attack,
    load_catalogue,
    select,
    shipped_dir,
)

SCRIPT = "set n 0\nwhile 1 { incr n }\n"


def header(name: str = "probe_alpha", /, **fields: str | None) -> list[str]:
    """The lines of a valid header for ``name``; ``fields`` (``stopped_by`` for ``stopped-by``)
    set or, when None, drop a key."""
    values: dict[str, str | None] = {
        "attack": name,
        "target": "CPU: a loop that never yields",
        "contained": "ended by the cpu limit or the command budget",
        "stopped-by": "cpu commands",
    }
    values.update({key.replace("_", "-"): value for key, value in fields.items()})
    return [f"# {key}: {value}" for key, value in values.items() if value is not None]


def write(directory: Path, name: str, lines: Sequence[str], script: str = SCRIPT) -> Path:
    path = directory / f"{name}.tcl"
    path.write_text("\n".join(lines) + "\n" + script, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(CatalogueError) as info:
        load_attack(path)
    return str(info.value)


# ---- one file ------------------------------------------------------------------------------------


def test_every_field_loads(tmp_path: Path) -> None:
    lines = [
        "# A launch storm: many tclets at once.",
        *header("probe_alpha", judge="host-responsive", stopped_by="penalty-box control-bounds"),
        "#",
        "# driver: status-flood",
        "# count: 300",
        "# quick-count: 60",
        "# deadline: 30s",
        "# quick-deadline: 1500ms",
        "# needs: dns low-port",
    ]
    path = write(tmp_path, "probe_alpha", lines)
    assert load_attack(path) == Attack(
        name="probe_alpha",
        target="CPU: a loop that never yields",
        contained="ended by the cpu limit or the command budget",
        stopped_by=("penalty-box", "control-bounds"),
        judge="host-responsive",
        driver="status-flood",
        count=300,
        quick_count=60,
        deadline=30.0,
        quick_deadline=1.5,
        needs=("dns", "low-port"),
        script=path.read_text(encoding="utf-8"),  # the whole file: the header is Tcl comments
        path=path,
    )


def test_defaults(tmp_path: Path) -> None:
    attack = load_attack(write(tmp_path, "probe_alpha", header()))
    assert (attack.judge, attack.driver, attack.needs) == ("ended", "tclet", ())
    assert (attack.count, attack.quick_count) == (1, 1)
    assert (attack.deadline, attack.quick_deadline) == (20.0, 5.0)


@pytest.mark.parametrize(
    ("fields", "quick_count", "quick_deadline"),
    [
        ({"count": "300"}, 300, 5.0),  # quick-count defaults to count
        ({"count": "300", "quick_count": "60"}, 60, 5.0),
        ({"deadline": "3s"}, 1, 3.0),  # min(deadline, 5s)
        ({"deadline": "500ms"}, 1, 0.5),
        ({"deadline": "60s"}, 1, 5.0),
        ({"deadline": "60s", "quick_deadline": "8s"}, 1, 8.0),
    ],
)
def test_quick_defaults(
    tmp_path: Path, fields: dict[str, str], quick_count: int, quick_deadline: float
) -> None:
    attack = load_attack(write(tmp_path, "probe_alpha", header(**fields)))
    assert (attack.quick_count, attack.quick_deadline) == (quick_count, quick_deadline)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, "probe_alpha", header(**{key.replace("-", "_"): None}))
    message = error_of(path)
    assert message.startswith(f"{path}: ")
    assert f"missing required key {key!r}" in message


def test_unknown_key_names_file_line_key_and_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "probe_alpha", [*header()[:2], "# colour: red", *header()[2:]])
    message = error_of(path)
    assert message.startswith(f"{path}:3: colour: unknown key 'colour'")
    for key in KNOWN_KEYS:
        assert key in message


def test_free_text_header_lines(tmp_path: Path) -> None:
    """Header lines that are not ``# key: value`` are a description, colons or not."""
    lines = [
        "#!/usr/bin/env tclsh",
        "# Note: capitalised words are not keys.",
        "# http://127.0.0.1:8080/ is where it comes from",
        "# see http://example.test/x: a colon mid-line",
        "#",
        *header(),
    ]
    assert load_attack(write(tmp_path, "probe_alpha", lines)).name == "probe_alpha"


def test_header_ends_at_first_non_comment_line(tmp_path: Path) -> None:
    """After the first line not starting with ``#``, ``# key: value`` lines are script."""
    after_code = ["set x 1", "# judge: survives", "# colour: red", "# count: 0"]
    path = write(tmp_path, "probe_alpha", [*header(), *after_code])
    assert load_attack(path).judge == "ended"
    # A blank line ends it too: a required key after one is missing.
    path = write(tmp_path, "probe_alpha", [*header(stopped_by=None), "", "# stopped-by: cpu"])
    assert "missing required key 'stopped-by'" in error_of(path)
    # An indented comment is not a header line either.
    path = write(tmp_path, "probe_alpha", ["  # attack: probe_alpha", *header()[1:]])
    assert "missing required key 'attack'" in error_of(path)


def test_key_set_twice(tmp_path: Path) -> None:
    path = write(tmp_path, "probe_alpha", [*header(), "# judge: ended", "# judge: survives"])
    assert error_of(path).startswith(f"{path}:6: judge: set twice (first at line 5)")


def test_empty_value(tmp_path: Path) -> None:
    path = write(tmp_path, "probe_alpha", [*header(), "# judge:"])
    assert error_of(path).startswith(f"{path}:5: judge: empty value")


@pytest.mark.parametrize("value", ["red\x1b[31mwine", "a\tb", "a\rb", "a\x85b", "a\x00b"])
def test_control_character_in_value(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, "probe_alpha", [*header(), f"# needs: {value}"])
    assert error_of(path).startswith(f"{path}:5: needs: control character in ")


@pytest.mark.parametrize("name", ["Probe", "1probe", "probe-alpha", "_probe", "probe.x", "pr obe"])
def test_bad_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, header(name))
    assert error_of(path).startswith(f"{path}:1: attack: bad name {name!r}")


def test_name_must_equal_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "probe_beta", header("probe_alpha"))
    message = error_of(path)
    assert message.startswith(f"{path}:1: attack: name 'probe_alpha'")
    assert "'probe_beta'" in message


@pytest.mark.parametrize(
    ("fields", "line", "key", "words"),
    [
        ({"stopped_by": "cpu teleport"}, 4, "stopped-by", ["'teleport'", *STOPPERS]),
        ({"stopped_by": "cpu cpu"}, 4, "stopped-by", ["twice"]),
        ({"judge": "vibes"}, 5, "judge", ["'vibes'", *JUDGES]),
        ({"judge": "ended survives"}, 5, "judge", ["'ended survives'"]),
        ({"driver": "tclets"}, 5, "driver", ["'tclets'", "control-slowloris", "status-flood"]),
        ({"needs": "dns internet"}, 5, "needs", ["'internet'", "low-port", "root"]),
    ],
)
def test_bad_words(
    tmp_path: Path, fields: dict[str, str], line: int, key: str, words: list[str]
) -> None:
    path = write(tmp_path, "probe_alpha", header(**fields))
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: {key}: ")
    for word in words:
        assert word in message


@pytest.mark.parametrize("key", ["count", "quick-count"])
@pytest.mark.parametrize(
    "value", ["0", "2001", "-1", "+5", "1.5", "ten", "3 4", "0x10", "9" * 30, "\uff11\uff12"]
)
def test_bad_count(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, "probe_alpha", header(**{key.replace("-", "_"): value}))
    message = error_of(path)
    assert message.startswith(f"{path}:5: {key}: expected a whole number from 1 to 2000")


@pytest.mark.parametrize("value", ["1", "2000", "0300"])
def test_good_count(tmp_path: Path, value: str) -> None:
    attack = load_attack(write(tmp_path, "probe_alpha", header(count=value)))
    assert attack.count == attack.quick_count == int(value)


@pytest.mark.parametrize("key", ["deadline", "quick-deadline"])
@pytest.mark.parametrize(
    "value",
    ["20", "20 s", "0.05s", "99ms", "601s", "600001ms", "1m", "-1s", "1e3s", "infs", "s", ".5s"],
)
def test_bad_deadline(tmp_path: Path, key: str, value: str) -> None:
    path = write(tmp_path, "probe_alpha", header(**{key.replace("-", "_"): value}))
    message = error_of(path)
    assert message.startswith(f"{path}:5: {key}: expected a duration with unit ms or s")
    assert repr(value) in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("100ms", 0.1), ("0.1s", 0.1), ("600s", 600.0), ("600000ms", 600.0), ("1.25s", 1.25)],
)
def test_good_deadline(tmp_path: Path, value: str, seconds: float) -> None:
    attack = load_attack(write(tmp_path, "probe_alpha", header(deadline=value)))
    assert attack.deadline == seconds
    assert attack.quick_deadline == min(seconds, 5.0)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "probe_alpha.tcl"
    path.write_bytes(b"# attack: probe_alpha\n# target: caf\xe9\n")
    message = error_of(path)
    assert message.startswith(f"{path}:2: not UTF-8: byte 0xe9")


def test_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "probe_alpha.tcl"
    path.write_text("\ufeff" + "\n".join(header()) + "\n", encoding="utf-8")
    assert error_of(path).startswith(f"{path}:1: starts with a byte-order mark")


def test_size_limit(tmp_path: Path) -> None:
    head = ("\n".join(header()) + "\n").encode()
    path = tmp_path / "probe_alpha.tcl"
    path.write_bytes(head + b"#" * (MAX_FILE_BYTES - len(head)))  # exactly 1 MiB: fine
    assert len(load_attack(path).script) == MAX_FILE_BYTES
    path.write_bytes(head + b"#" * (MAX_FILE_BYTES + 1 - len(head)))
    assert error_of(path) == f"{path}: larger than {MAX_FILE_BYTES} bytes (1 MiB)"


@pytest.mark.timeout(10)
def test_not_a_regular_file(tmp_path: Path) -> None:
    """A directory or FIFO named NAME.tcl is refused, the FIFO without waiting for a writer."""
    directory = tmp_path / "probe_alpha.tcl"
    directory.mkdir()
    assert error_of(directory).startswith(f"{directory}: cannot read")
    fifo = tmp_path / "probe_beta.tcl"
    os.mkfifo(fifo)
    assert error_of(fifo) == f"{fifo}: cannot read: not a regular file"
    missing = tmp_path / "probe_gamma.tcl"
    assert error_of(missing).startswith(f"{missing}: cannot read: No such file")


def test_not_a_tcl_file(tmp_path: Path) -> None:
    path = tmp_path / "probe_alpha.txt"
    path.write_text("\n".join(header()) + "\n", encoding="utf-8")
    assert error_of(path) == f"{path}: not a .tcl file"


# ---- directories -------------------------------------------------------------------------------


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the shipped directory, so these tests do not depend on its contents."""
    directory = tmp_path / "shipped"
    directory.mkdir()
    write(directory, "zeta_shipped", header("zeta_shipped"))
    write(directory, "alpha_shipped", header("alpha_shipped"))
    monkeypatch.setattr(catalogue, "shipped_dir", lambda: directory)
    return directory


def test_catalogue_order_shipped_then_each_dir_sorted(tmp_path: Path, shipped: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write(first, "probe_b", header("probe_b"))
    write(first, "probe_a", header("probe_a"))
    (first / "README").write_text("# attack: not_a_tcl_file\n", encoding="utf-8")
    (first / ".#probe_a.tcl").symlink_to("user@host.1234")  # an editor's lock: left out
    write(first, ".hidden", header(".hidden"))
    write(second, "probe_0", header("probe_0"))
    names = [attack.name for attack in load_catalogue([first, second])]
    assert names == ["alpha_shipped", "zeta_shipped", "probe_a", "probe_b", "probe_0"]
    assert [a.name for a in load_catalogue()] == ["alpha_shipped", "zeta_shipped"]


def test_duplicate_name_across_directories(tmp_path: Path, shipped: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    duplicate = write(extra, "zeta_shipped", header("zeta_shipped"))
    with pytest.raises(CatalogueError) as info:
        load_catalogue([extra])
    message = str(info.value)
    assert message.startswith(f"{duplicate}: attack: attack 'zeta_shipped' is also defined in ")
    assert str(shipped / "zeta_shipped.tcl") in message


def test_catalogue_dir_errors(tmp_path: Path, shipped: Path) -> None:
    not_dir = write(tmp_path, "probe_alpha", header())
    missing = tmp_path / "missing"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_tcl = tmp_path / "no_tcl"
    no_tcl.mkdir()
    (no_tcl / "probe.TCL.txt").write_text("\n".join(header()), encoding="utf-8")
    for directory, what in [
        (not_dir, "not a directory"),
        (missing, "no such directory"),
        (empty, "no .tcl files"),
        (no_tcl, "no .tcl files"),
    ]:
        with pytest.raises(CatalogueError) as info:
            load_catalogue([directory])
        assert str(info.value).startswith(f"{directory}: {what}")


def test_a_bad_file_in_a_directory_fails_the_load(tmp_path: Path, shipped: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    write(extra, "probe_a", header("probe_a"))
    bad = write(extra, "probe_b", header("probe_b", judge="vibes"))
    with pytest.raises(CatalogueError, match=f"^{re.escape(str(bad))}:5: judge: "):
        load_catalogue([extra])


def test_select(tmp_path: Path, shipped: Path) -> None:
    attacks = load_catalogue()
    assert [a.name for a in select(attacks, ["zeta_shipped", "alpha_shipped"])] == [
        "alpha_shipped",
        "zeta_shipped",
    ]
    assert select(attacks, ["zeta_shipped"]) == [attacks[1]]
    assert select(attacks, []) == attacks
    with pytest.raises(CatalogueError) as info:
        select(attacks, ["zeta_shipped", "nope", "nada"])
    assert str(info.value) == (
        "unknown attack 'nope', 'nada'; known attacks: alpha_shipped, zeta_shipped"
    )


# ---- the shipped catalogue ---------------------------------------------------------------------


def shipped_files() -> list[Path]:
    files = sorted(shipped_dir().glob("*.tcl"))
    if not files:
        pytest.skip(f"{shipped_dir()} has no .tcl file yet (its attacks are written separately)")
    return files


def test_shipped_catalogue_loads() -> None:
    files = shipped_files()
    attacks = load_catalogue()
    assert [a.path for a in attacks] == files
    assert len({a.name for a in attacks}) == len(attacks)


def test_shipped_attacks_read_only_known_argv_keys() -> None:
    """Each ``dict get $argv KEY`` in a shipped attack names a key every launch supplies."""
    for path in shipped_files():
        used = re.findall(r"dict\s+get\s+\$argv\s+([A-Za-z_]\w*)", path.read_text("utf-8"))
        unknown = sorted(set(used) - set(ARGV_KEYS))
        assert unknown == [], f"{path} reads argv keys {unknown}, not among {ARGV_KEYS}"


def test_shipped_name_again_in_extra_dir(tmp_path: Path) -> None:
    original = shipped_files()[0]
    extra = tmp_path / "extra"
    extra.mkdir()
    copy = extra / original.name
    shutil.copyfile(original, copy)
    with pytest.raises(CatalogueError) as info:
        load_catalogue([extra])
    assert str(info.value).startswith(f"{copy}: attack: ")
    assert str(original) in str(info.value)
