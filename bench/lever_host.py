"""``tcletd serve`` without demotion, for bench/bench_levers.py: the worker's ``demote`` is
taken out before the host starts, so that no worker is ever put in the idle scheduling class or
given a lower CPU weight. A measuring device only; never a way to run a host.

    python bench/lever_host.py serve --socket PATH ...
"""

from __future__ import annotations

import sys

from tcletd.cli.main import main
from tcletd.host.supervisor import WorkerProcess


def _never(self: WorkerProcess) -> bool:
    return False


WorkerProcess.demote = _never  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
