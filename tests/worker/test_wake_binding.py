"""A worker's wake detector uses the Tcl library the zygote bound before it forked: it does not
look for it again in /proc/self/maps (~0.8 ms of every worker's start, measured)."""

from __future__ import annotations

import tkinter

import pytest

from tcletd.worker import channels, limits
from tcletd.worker.limits import WakeDetector


def test_the_wake_detector_binds_the_library_the_zygote_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tk = tkinter.Tcl()
    kind, path = channels.probe(tk)  # what the zygote does before it forks
    assert kind == "native", path

    def searched() -> str:
        raise AssertionError("the worker read /proc/self/maps again")

    monkeypatch.setattr(channels, "find_libtcl", searched)
    monkeypatch.setattr(limits, "find_libtcl", searched, raising=False)
    detector = WakeDetector(tk)
    assert detector.available
