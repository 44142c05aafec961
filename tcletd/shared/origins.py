"""A tclet's default origin: what the CLI and the API give a tclet launched without one.

Both sides (operator and host); the standard library only, so that ``tcletd run --host``
(:mod:`tcletd.cli.client`) pays nothing for it. The origin is the only source of a tclet's
origin variables (``$originSocketHost``), so the CLI and the API must agree on it: a tclet that
``tcletd run`` allows to reach localhost is allowed the same when an embedder launches it.
"""

from __future__ import annotations

import os
from urllib.parse import quote


def default_origin(script_file: str | None = None) -> str:
    """The ``file://`` URL of ``script_file`` (its real path), or, for a script without a file
    (``tcletd run -``, :meth:`tcletd.api.Host.launch` without ``origin``), the ``file://`` URL of
    the current directory, with its trailing slash (``file:///home/me/work/``). Either way its
    socket host is ``localhost``: under ``home`` the tclet may connect to this machine's ports
    above 1024, as a script run from a local file could in the plugin."""
    if script_file is not None:
        return _file_url(os.path.realpath(script_file))
    try:
        here = os.getcwd()
    except OSError:  # the directory was removed under us: the root still names this machine
        return "file:///"
    return _file_url(here.rstrip("/") + "/")


def _file_url(path: str) -> str:
    # Through bytes: a path that is not UTF-8 (surrogate-escaped by os) still gets a URL.
    return "file://" + quote(os.fsencode(path))
