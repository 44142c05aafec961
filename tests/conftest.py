"""Fixtures and hooks only; the helpers they use live in the ``support`` package.

Tests are laid out by layer: ``unit`` (pure code, in process), ``worker`` (the worker's runtime
and sandbox, real Tcl and worker processes), ``host`` (an in-process Host with real workers) and
``e2e`` (``tcletd`` run as a user runs it). Everything outside ``unit`` is marked ``slow``:
``pytest -m "not slow"`` is the fast lane.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dns import DnsServer
from support.net import TcpServer, echo_handler, refused_port, silent_handler
from support.processes import TcletRunner

TESTS = Path(__file__).resolve().parent
SLOW_LAYERS = frozenset({"worker", "host", "e2e"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test of a slow layer (worker processes, tclsh, whole-system runs) ``slow``."""
    for item in items:
        try:
            layer = item.path.resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if layer in SLOW_LAYERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def session_dns() -> Iterator[DnsServer]:
    """The suite's DNS server on 127.0.0.1 (NXDOMAIN for every name), set as
    ``TCLETD_NAMESERVERS`` for every Host and every tcletd process the tests start: no test
    sends a query to the machine's resolver. Tests that care about names start their own."""
    with DnsServer() as server:
        before = os.environ.get("TCLETD_NAMESERVERS")
        os.environ["TCLETD_NAMESERVERS"] = server.address
        try:
            yield server
        finally:
            if before is None:
                os.environ.pop("TCLETD_NAMESERVERS", None)
            else:
                os.environ["TCLETD_NAMESERVERS"] = before


@pytest.fixture
def tclet(tmp_path: Path) -> TcletRunner:
    """``tclet(script, ...)`` runs a tclet in a fresh ``tcletd run`` process."""
    return TcletRunner(tmp_path)


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpServer]:
    """A loopback echo server (a thread per connection), one per test module."""
    with TcpServer(echo_handler, "echo") as server:
        yield server


@pytest.fixture(scope="module")
def silent() -> Iterator[TcpServer]:
    """A loopback server that accepts and never says a word, reading until the client goes."""
    with TcpServer(silent_handler, "silent") as server:
        yield server


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections (bound, never listening), held for the test."""
    with refused_port() as port:
        yield port
