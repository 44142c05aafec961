"""The operator's side: the ``tcletd`` command line (:mod:`~tcletd.cli.main`), the resident
host's thin client (:mod:`~tcletd.cli.client`), the embedded run and doctor
(:mod:`~tcletd.cli.runner`) and the policy tool (:mod:`~tcletd.cli.policytool`).

Nothing in the host imports this package.
"""
