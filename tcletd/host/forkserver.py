"""The fork server workers come from, started as early as the host can start it.

Host side of the trust boundary. The fork server is a fresh Python process that preloads the
worker's modules (tkinter, pyzmq, msgspec, the Tcl runtime) once, so that each launch costs a
fork, not an interpreter start. It must start before the host creates any ZeroMQ context, and
the earlier it starts the more of its start-up overlaps the host's own imports; this module
therefore imports nothing heavy (no asyncio, no zmq).
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import types
from collections.abc import Iterator
from typing import Any

# Preloaded into the fork server so that a launch pays only the fork: measured here, a preloaded
# forkserver child says hello in ~13 ms, a fresh `python -c` worker that imports them in ~44 ms.
PRELOAD = ["tcletd.worker.main"]


@contextlib.contextmanager
def no_main_module() -> Iterator[None]:
    """Hide the host's ``__main__`` while the fork server or a worker is started.

    multiprocess tells each child to re-import the parent's main script; for the host that is the
    CLI or the embedder's program, i.e. host code, which must never run on the untrusted side.
    """
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = saved


def context() -> Any:
    """The multiprocess forkserver context, with the worker preload set."""
    import multiprocess

    ctx = multiprocess.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the fork server if it is not running (idempotent, cheap once running)."""
    from multiprocess import forkserver

    raise_descriptor_limit()  # before the fork server is spawned: it inherits the limit
    context()
    _own_temp_dir()
    with no_main_module():
        forkserver.ensure_running()


def _own_temp_dir() -> None:
    """Give multiprocess (the fork server's listener) a locked run directory of ours instead of
    its own ``pymp-*``, which it removes only at a clean exit: a killed host's is then reclaimed
    by the next host like its other run directories (:mod:`tcletd.host.rundir`)."""
    from multiprocess import process

    from tcletd.host.rundir import RunDir

    config = process.current_process()._config
    if config.get("tempdir") is None:
        run_dir = RunDir()
        config["tempdir"] = str(run_dir.path)
        atexit.register(run_dir.close)


def raise_descriptor_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit now.

    A host holds four descriptors per tclet (its socketpairs and its sentinel) and one per socket,
    and the fork server one per live worker: the usual soft limit of 1024 would stop a host near
    250 tclets. Raising the soft limit to the hard one needs no privilege. Workers are not
    affected: each sets its own limit from its socket quota (:mod:`tcletd.worker.sandbox`), and
    its descriptors are numbered from the bottom (:mod:`tcletd.worker.main`).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
