"""The filter compiled once: a worker's copy, patched with its pid, is the very program
libseccomp compiles for that pid, and the sandbox's cheap reads say what the kernel says."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tcletd.worker import sandbox, seccomp


@pytest.fixture
def template(monkeypatch: pytest.MonkeyPatch) -> Iterator[bytes]:
    """The template prepared in this process; the module's state is put back afterwards, so
    that later tests' forked children load their filter as they would have."""
    for name in ("_template", "_template_pid_at", "_template_rules", "_inherited"):
        monkeypatch.setattr(seccomp, name, getattr(seccomp, name))
    if not seccomp.prepare() or seccomp._template is None:
        pytest.skip("no libseccomp, or no template on this machine")
    yield seccomp._template


@pytest.mark.parametrize("pid", [1, 4242, os.getpid(), 2**22])
def test_the_patched_template_is_the_program_compiled_for_the_pid(
    template: bytes, pid: int
) -> None:
    assert seccomp._for_pid(template, pid) == seccomp._export(seccomp.rules(pid))
    assert seccomp._template_rules == len(seccomp.rules(pid))


def test_the_filters_a_fork_inherits_are_counted_at_prepare(template: bytes) -> None:
    # This process loaded none; were it counted wrong, a worker's load would be judged by the
    # wrong "before" and reported inactive (or active when nothing was added).
    assert seccomp._inherited == seccomp._filters()[0] == 0


def test_vm_size_is_the_kernels_vmsize() -> None:
    def status() -> int:
        with open("/proc/self/status", "rb") as f:
            line = next(x for x in f if x.startswith(b"VmSize:"))
        return int(line.split()[1]) * 1024

    # The address space may move between two reads (an allocation): one of them agrees.
    before, ours, after = status(), sandbox.vm_size(), status()
    assert ours in (before, after)
