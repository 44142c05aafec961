"""README's ``tcletd serve`` synopsis lists serve's options as ``tcletd serve --help`` shows
them: an option added to the parser without the synopsis (or dropped) fails here."""

from __future__ import annotations

import argparse
import re

from support import ROOT

from tcletd.cli.commands import COMMANDS


def _help_options() -> list[str]:
    serve = next(c for c in COMMANDS if c.name == "serve")
    assert serve.arguments is not None
    parser = argparse.ArgumentParser(add_help=False)
    serve.arguments(parser)
    return [a.option_strings[0] for a in parser._actions if a.option_strings]


def test_the_readme_synopsis_lists_serves_options_in_help_order() -> None:
    readme = (ROOT / "README.md").read_text()
    synopses = re.findall(r"^`tcletd serve (\[.*)`$", readme, re.MULTILINE)
    assert len(synopses) == 1, synopses
    listed = re.findall(r"\[(--[a-z-]+)", synopses[0])
    assert listed == _help_options()
    assert "--penalty" in listed
