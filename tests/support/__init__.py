"""Helpers shared by the tests, importable as ``support`` (``pythonpath = ["tests"]``).

- :mod:`support.net`: loopback servers (echo, sink, source, silent, HTTP) and refused ports.
- :mod:`support.processes`: ``tcletd`` and other commands run as bounded, PID-killed processes;
  the ``tclet`` fixture's runner.
- :mod:`support.waiting`: waiting for a condition (``until`` in an event loop, ``wait_until``
  outside one) instead of sleeping.
- :mod:`support.system`: what this process and its workers hold (descriptors, descendants,
  scheduling classes).
- :mod:`support.audit`: reading an audit log.
- :mod:`support.hosting`: the output callbacks of an in-process :class:`~tcletd.api.Host`.
- :mod:`support.addresses`: spellings of IPv4 addresses.
- :mod:`support.runtime`: a worker's Tcl runtime in this process, for tclets that open no socket.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TESTS = ROOT / "tests"
TCL_DIR = TESTS / "tcl"  # the differential corpus; hostile/ holds the attacks
EXAMPLES = ROOT / "examples"
POLICIES = ROOT / "policies"
