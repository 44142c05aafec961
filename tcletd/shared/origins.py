"""A tclet's default origin: what the CLI and the API give a tclet launched without one.

Both sides (operator and host); the standard library's ``os`` only, so that ``tcletd run
--host`` (:mod:`tcletd.cli.client`) pays nothing for it. The origin is the only source of a
tclet's origin variables (``$originSocketHost``), so the CLI and the API must agree on it: a
tclet that ``tcletd run`` allows to reach localhost is allowed the same when an embedder
launches it.
"""

from __future__ import annotations

import os

# What ``urllib.parse.quote(path_bytes)`` leaves as it is (RFC 3986's unreserved characters and
# its default safe ``/``); every other byte becomes %XX. Spelled out here because importing
# urllib.parse (and the ipaddress it imports) cost a ``tcletd run --host`` 2.5-3.5 ms of its
# ~45, for one call.
_KEPT = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")
_QUOTED = tuple(chr(b) if b in _KEPT else f"%{b:02X}" for b in range(256))


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
    return "file://" + "".join([_QUOTED[b] for b in os.fsencode(path)])
