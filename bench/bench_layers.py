"""Micro-benchmark: what the worker's network namespace and seccomp filter cost, against none.

    .venv/bin/python bench/bench_layers.py [--rounds N] [--batch B]

Forks children the way the zygote forks workers and measures, for each layer and none:
the layer's set-up in the child (``netns.enter``: the ``unshare``; ``seccomp.load``: building
and loading the filter; p50/p90), the whole fork+exit+reap per child run one after another, the
time to fork a batch of children that all hold their layer, then end them all at once and reap
them (many workers exiting together: the kernel tears namespaces down on a work queue), and
one cheap system call's cost under the layer (``getppid``, median of a C-speed loop in the
child). Linux only; the namespace needs root or an unprivileged user namespace.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import statistics
import time

from tcletd.worker import netns, seccomp

LAYERS = {"none": (), "netns": (netns.enter,), "seccomp": (seccomp.load,)}


def _child(layer: str, wfd: int) -> None:
    t0 = time.perf_counter_ns()
    for step in LAYERS[layer]:
        if not step().active:
            os._exit(3)
    os.write(wfd, f"{time.perf_counter_ns() - t0}\n".encode())


def syscall_ns(layer: str) -> float:
    """One ``getppid`` under ``layer``, in ns: the median of 9 loops of 20000, in a child."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        for step in LAYERS[layer]:
            step()
        getppid = ctypes.CDLL(None).getppid
        runs = []
        for _ in range(9):
            t0 = time.perf_counter_ns()
            for _ in range(20000):
                getppid()
            runs.append((time.perf_counter_ns() - t0) / 20000)
        os.write(wfd, f"{statistics.median(runs)}".encode())
        os._exit(0)
    os.close(wfd)
    out = os.read(rfd, 100)
    os.close(rfd)
    os.waitpid(pid, 0)
    return float(out)


def sequential(rounds: int, layer: str) -> tuple[list[float], float]:
    """Fork, (unshare), exit, reap, one child after another: unshare µs each, wall µs each."""
    rfd, wfd = os.pipe()
    start = time.perf_counter()
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:
            _child(layer, wfd)
            os._exit(0)
        os.waitpid(pid, 0)
    wall = (time.perf_counter() - start) / rounds * 1e6
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    return [int(x) / 1000 for x in data.split()], wall


def batch(size: int, layer: str) -> tuple[float, float]:
    """Fork ``size`` children that stay up, then SIGKILL all: ms to start them, ms to reap all."""
    rfd, wfd = os.pipe()
    pids = []
    start = time.perf_counter()
    for _ in range(size):
        pid = os.fork()
        if pid == 0:
            _child(layer, wfd)
            signal.pause()
            os._exit(0)
        pids.append(pid)
    os.close(wfd)
    got = 0
    while got < size:
        got += os.read(rfd, 65536).count(b"\n")
    started = (time.perf_counter() - start) * 1e3
    os.close(rfd)
    start = time.perf_counter()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        os.waitpid(pid, 0)
    return started, (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    for layer in [*LAYERS, *LAYERS]:
        costs, wall = sequential(args.rounds, layer)
        started, reaped = batch(args.batch, layer)
        print(
            f"{layer:8}: set-up p50 {statistics.median(costs):7.1f} us"
            f" p90 {statistics.quantiles(costs, n=10)[-1]:7.1f} us;"
            f" fork+exit+reap {wall:7.1f} us each;"
            f" {args.batch} alive: start {started:6.1f} ms, kill+reap all {reaped:6.1f} ms;"
            f" getppid {syscall_ns(layer):5.0f} ns"
        )


if __name__ == "__main__":
    main()
