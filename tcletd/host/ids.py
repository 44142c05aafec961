"""Tclet ids: twelve hex digits, short enough to type, unique for the life of a host.

Host side. One id names a tclet everywhere: the CLI, the API, the audit log, the worker's ZeroMQ
routing identity, its cgroup. Ids are a keyed permutation of a counter (a four-round Feistel
network over 48 bits), so two tclets of one host never share an id, by construction rather than by
luck, while ids do not read as a sequence that invites guessing a neighbour's (the control socket
is the operator's own, so this is for people, not a defence).
"""

from __future__ import annotations

import hashlib
import re
import secrets

BITS = 48
_HALF = BITS // 2
_MASK = (1 << _HALF) - 1
ROUNDS = 4
ID_RE = re.compile(r"[0-9a-f]{12}")
# A request may name a tclet by a prefix of its id, as docker takes one; fewer digits than this
# would match too many tclets to be useful.
MIN_PREFIX = 4


class TcletIds:
    """Makes the ids of one host's tclets: the n-th id is a keyed permutation of n."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(16)
        self._next = 0

    def __call__(self) -> str:
        if self._next >= 1 << BITS:
            raise OverflowError("a host's tclet ids are spent (2**48 launches)")
        n, self._next = self._next, self._next + 1
        return f"{self._permute(n):012x}"

    def _permute(self, n: int) -> int:
        left, right = n >> _HALF, n & _MASK
        for rnd in range(ROUNDS):
            left, right = right, left ^ self._round(rnd, right)
        return (left << _HALF) | right

    def _round(self, rnd: int, half: int) -> int:
        data = rnd.to_bytes(1, "big") + half.to_bytes(4, "big")
        digest = hashlib.blake2b(data, key=self._key, digest_size=4).digest()
        return int.from_bytes(digest, "big") & _MASK
