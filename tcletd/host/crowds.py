"""Site crowds: a site's tclets past its first few running at once start in the idle class.

Host side of the trust boundary; nothing here comes from a worker. A launch storm (hundreds of
tclets at once from one site, each spinning) escapes the per-worker defences: each worker gets
too small a share of the CPU to be demoted as a hog or to reach its cpu limit in good time, and
each has its cgroup's full CPU weight, so the site weighs on the machine as many tclets do.
Measured with ``tcletd attack --only launch_storm --quick`` (60 spinners from one site) on this
2-core VM: the host's control answers p99 1.0-1.2 s and 8-11 of the 60 launches not started
after 5 s; with the tclets past the fourth demoted at their start, 0.57-0.63 s and all 60
started. (Dividing the default CPU weight among a site's workers instead, 1/k each, made the
probe's echo p99 23-130 times its p99 alone against 1.8-2.1 without, on Linux 6.18's EEVDF
scheduler: a worker of a tiny weight still runs a whole slice once picked; not kept.)

A site is what the penalty box holds (:attr:`tcletd.policy.Origin.site`: scheme, host and port),
for tclets from the network (an ``http`` or ``https`` origin, as a page's tclets have): an
operator's own scripts (a ``file:`` origin, or none: an embedder's or a local client's) are not
a crowd, whatever their number. The first
:data:`CROWD` running tclets of a site run as any other; a tclet launched while as many run is
demoted for its life (the idle scheduling class and the least CPU weight, as a hog is), and
audited as such; a site's count falls as its tclets end.
"""

from __future__ import annotations

from tcletd.policy import Origin

# Running tclets a site may have at full priority: a page of a few tclets runs unhindered.
CROWD = 4


class SiteCrowds:
    """How many tclets each site has running."""

    def __init__(self, crowd: int = CROWD) -> None:
        self.crowd = crowd
        self._running: dict[str, set[str]] = {}

    def join(self, origin: Origin, tclet_id: str) -> int:
        """Count ``tclet_id`` in its site; how many of the site's run with it beyond the crowd
        (0: it runs at full priority; always 0 for an origin not from the network)."""
        site = _site(origin)
        if site is None:
            return 0
        members = self._running.setdefault(site, set())
        members.add(tclet_id)
        return max(0, len(members) - self.crowd)

    def leave(self, origin: Origin, tclet_id: str) -> None:
        site = _site(origin)
        if site is not None and (members := self._running.get(site)) is not None:
            members.discard(tclet_id)
            if not members:
                del self._running[site]

    def running(self, origin: Origin) -> int:
        site = _site(origin)
        return len(self._running.get(site, ())) if site is not None else 0


def _site(origin: Origin) -> str | None:
    return origin.site if origin.known and origin.proto in ("http", "https") else None
