"""``tcletd page``'s pure parts: which tags of a page are tclets and what each gets, and the
name-prefixed, line-buffered output."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tcletd.cli.page import MAX_PARTIAL, Lines, embeds
from tcletd.shared.errors import ScriptNotFound

ARGS = types.SimpleNamespace(policy=None, limit=["cpu=1s"])


def test_each_embed_with_a_src_is_a_tclet_with_all_its_attributes(tmp_path: Path) -> None:
    (tmp_path / "a.tcl").write_text("puts a\n")
    page = (
        '<EMBED SRC="a.tcl" Name="one" WIDTH=10 src="ignored.tcl" flag>'
        '<embed src="  "><embed name=nosrc><object><embed src="https://127.0.0.1:8443/b.tcl#x">'
    )
    base = f"file://{tmp_path}/page.html"
    first, second = embeds("page.html", page, base, ARGS)
    assert first.name == "one"
    assert first.fields["embed_args"] == {"src": "a.tcl", "name": "one", "width": "10", "flag": ""}
    assert first.fields["script"] == "puts a\n"
    assert first.fields["origin"] == f"file://{tmp_path}/a.tcl"
    assert first.fields["url"] is None and first.fields["limits"] == ["cpu=1s"]
    assert second.name == "https://127.0.0.1:8443/b.tcl#x"
    assert second.fields["url"] == "https://127.0.0.1:8443/b.tcl"
    assert second.fields["script"] == "" and second.fields["origin"] is None


def test_a_name_is_made_printable_and_short() -> None:
    (found,) = embeds(
        "p", '<embed src="http://127.0.0.1/t" name="a&#10;b' + "x" * 99 + '">', "", ARGS
    )
    assert "\n" not in found.name and found.name.startswith("a?b") and len(found.name) == 64


@pytest.mark.parametrize(
    ("src", "says"),
    [
        ("javascript:alert(1)", "expected a file or an http:// or https:// URL"),
        ("file://elsewhere/t.tcl", "a file on another machine"),
        ("missing.tcl", "missing.tcl: no such file"),
    ],
)
def test_a_src_that_cannot_be_run_is_refused(tmp_path: Path, src: str, says: str) -> None:
    with pytest.raises(ScriptNotFound, match=says):
        embeds("p.html", f'<embed src="{src}">', f"file://{tmp_path}/p.html", ARGS)


def test_output_is_prefixed_line_by_line() -> None:
    written: list[bytes] = []
    lines = Lines("alpha", written.append)
    lines.feed(b"one\ntw")
    lines.feed(b"o\nthree")
    assert b"".join(written) == b"alpha | one\nalpha | two\n"
    lines.note("tcletd: ended")
    assert b"".join(written).endswith(b"alpha | three\nalpha | tcletd: ended\n")
    lines.flush()
    lines.feed(b"x" * (MAX_PARTIAL + 1))  # a line never ended is written in pieces
    assert written[-1] == b"alpha | " + b"x" * (MAX_PARTIAL + 1) + b"\n"
