"""Benchmark: time of one Policy.decide, for an address literal and for a name with three
resolved addresses, under the shipped home policy (origin variables) and a larger policy.

Run:  .venv/bin/python bench/bench_policy.py
Prints median, p90 and min per decision in microseconds over 31 runs of 2000 calls each;
target <= 20 us. On a shared VM the spread between runs is large; min is the least noisy.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from ipaddress import ip_address

from tcletd.policy import Origin, load_policy, policy_from_text
from tcletd.policy.addresses import canonical_host

RUNS = 31
CALLS = 2000

LARGER = """
[connect]
allow = [
    "$originSocketHost >1024",
    "*.example.com 443",
    "10.0.0.0/8 8000-8999",
    "fd00::/8 *",
    "www.example.org 80",
]
disallow = [
    "loopback *",
    "unspecified *",
    "metadata *",
    "link-local *",
    "* 25",
    "*.internal.example.com *",
]
"""


def measure(fn: Callable[[], object]) -> tuple[float, float, float]:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        samples.append((time.perf_counter() - start) / CALLS * 1e6)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(0.9 * len(samples)))]
    return statistics.median(samples), p90, samples[0]


def main() -> int:
    origin = Origin.parse("http://tclets.example.com:8080/apps/t.tcl")
    literal = canonical_host("10.1.2.3")
    name = canonical_host("www.example.com")
    resolved = [ip_address("10.1.2.3"), ip_address("10.1.2.4"), ip_address("fd00::5")]
    cases = []
    for label, policy in (("home", load_policy("home")), ("larger", policy_from_text(LARGER))):
        cases.append(
            (
                f"{label}: address literal",
                lambda p=policy: p.decide("connect", literal, 8080, origin),
            )
        )
        cases.append(
            (
                f"{label}: name + 3 addresses",
                lambda p=policy: p.decide("connect", name, 8080, origin, resolved),
            )
        )
    # canonical_host is memoised (the host sees the same spellings again and again): the first
    # figure is a repeat, the second what a new spelling costs (the function behind the cache).
    uncached = canonical_host.__wrapped__
    for text in ("0x7f.1", "www.example.com"):
        cases.append((f"canonical_host({text!r}), repeated", lambda t=text: canonical_host(t)))
        cases.append((f"canonical_host({text!r}), new", lambda t=text: uncached(t)))
    print(f"python {sys.version.split()[0]}; {RUNS} runs x {CALLS} calls; microseconds per call")
    print(f"{'case':46} {'median':>8} {'p90':>8} {'min':>8}")
    for label, fn in cases:
        median, p90, least = measure(fn)
        print(f"{label:46} {median:8.2f} {p90:8.2f} {least:8.2f}")
    print("reproduce: .venv/bin/python bench/bench_policy.py")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
