"""This process's own stdout and stderr as sinks for a tclet's output (the embedded host's
default, and the resident host's client). Imports only the standard library.
"""

from __future__ import annotations

import os
import sys


def write_own(stream: str, data: bytes) -> None:
    """Write to this process's stdout or stderr. When its reader is gone (a closed pipe), point
    the stream at /dev/null, so that no later flush fails, and raise BrokenPipeError."""
    out = sys.stdout if stream == "stdout" else sys.stderr
    try:
        out.buffer.write(data)
        out.buffer.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        os.close(devnull)
        raise
