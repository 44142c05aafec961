"""What both sides of a trust boundary import: the worker wire (:mod:`~tcletd.shared.protocol`),
the exception tree and exit statuses (:mod:`~tcletd.shared.errors`), and the vocabulary of a
tclet's life (:mod:`~tcletd.shared.states`).

The worker imports these and nothing else of tcletd outside :mod:`tcletd.worker`; so nothing
here may import the host, the policy engine, the API or the CLI, nor hold host state.
"""
