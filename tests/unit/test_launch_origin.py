"""A run frame's origin is checked as the CLI and the API check it (one function,
``tcletd.policy.addresses.origin_problem``), and the default origin the CLI and the API give a
tclet is a ``file:`` URL whose socket host is ``localhost``."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest

from tcletd.policy.addresses import Origin, origin_problem
from tcletd.shared.launch import RequestInvalid, decode_run
from tcletd.shared.origins import default_origin


@pytest.mark.parametrize(
    "origin", ["not a url", "file:relative.tcl", "http://h:99999/", "x" * 5000]
)
def test_a_run_frame_with_an_unparseable_origin_is_refused_naming_it(origin: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        decode_run({"op": "run", "origin": origin}, b"puts hi")
    assert str(info.value) == f"run request: origin: {origin_problem(origin)}"
    assert str(info.value).startswith("run request: origin: cannot parse origin URL ")


def test_a_run_frame_with_a_good_origin_or_none_is_taken() -> None:
    url = "http://127.0.0.1:8080/app.tcl"
    assert decode_run({"op": "run", "origin": url}, b"puts hi").origin == url
    assert decode_run({"op": "run"}, b"puts hi").origin is None
    assert origin_problem(url) is None


def test_the_default_origin_is_a_file_url_on_localhost(tmp_path: Path) -> None:
    script = tmp_path / "dir with space" / "t.tcl"
    script.parent.mkdir()
    script.write_text("puts hi")
    for url in (default_origin(), default_origin(str(script))):
        origin = Origin.parse(url)
        assert origin.known and origin.proto == "file" and origin.socket_host == "localhost"
    assert Origin.parse(default_origin()).home_dir_url == f"file://{quote(os.getcwd())}/"
    assert Origin.parse(default_origin(str(script))).path.endswith("/dir%20with%20space/t.tcl")
    # Every byte a path can hold is quoted as urllib quotes it (tcletd quotes without urllib).
    odd = tmp_path / os.fsdecode(bytes(b for b in range(1, 256) if b != ord("/")))
    assert default_origin(str(odd)) == "file://" + quote(os.fsencode(os.path.realpath(odd)))
