"""tcletd: a runtime that hosts untrusted Tcl scripts ("tclets") in isolated worker processes.

The package root is shared by both sides of the trust boundary, so it imports nothing: the
embedding API lives in :mod:`tcletd.api`, the worker in :mod:`tcletd.worker`.
"""

__version__ = "0.1.0"
