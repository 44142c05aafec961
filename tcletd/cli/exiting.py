"""How the ``tcletd`` program ends: as the interpreter would, less the teardown of its heap.

Operator side (the CLI's process, whichever command it ran). Only the program's entry point
(:func:`tcletd.cli.main.entry`) calls it; :func:`tcletd.cli.main.main` returns its status to an
in-process caller as before.
"""

from __future__ import annotations

import os
import sys


def exit_now(status: int) -> None:
    """End the process with ``status`` as the interpreter's own exit would, less its teardown.

    The atexit handlers run (what the host's modules registered to clean up) and our output is
    flushed, but the freeing of every module and object is left to the kernel: measured here,
    20-50 ms after an embedded run (more on a loaded machine), 7-8 ms after a ``run --host``
    client. A live thread that is not a daemon is waited for, as ever, by the interpreter's own
    exit; so is an output that fails to flush, which then reports as it always has."""
    threading = sys.modules.get("threading")  # not imported: no thread to wait for
    if threading is not None:
        main_thread = threading.main_thread()
        if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
            sys.exit(status)
    import atexit

    atexit._run_exitfuncs()  # cleared once run: the interpreter's exit would not run them twice
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status)
