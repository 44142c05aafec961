"""The operator's side: the ``tcletd`` command line (:mod:`~tcletd.cli.main`, its commands in
:mod:`~tcletd.cli.commands`), the resident host's thin client (:mod:`~tcletd.cli.client`), the
embedded run and doctor (:mod:`~tcletd.cli.runner`) and the policy tool
(:mod:`~tcletd.cli.policytool`).

Nothing in the host imports this package.
"""

ENV_HOST = "TCLETD_HOST"
"""The resident host's control socket, for a client given none."""
