"""Attacks made by the tool's own client on the host's control socket, not by a tclet.

Client side of the trust boundary: this is the hostile client. ``control-slowloris`` opens
connections that each send half a frame (a ``run`` announcing a large script, and a little of
it) and hold it, reopening whatever the host closes; ``status-flood`` sends bursts of ``status``
requests on a few connections as fast as the host reads them. Meanwhile the runner's control
watch times a well-behaved client's answers and a tclet is launched through the same socket:
that the host still answers and still launches is the verdict (``host-responsive``). The
drivers stay on the tool's CPUs (:func:`tcletd.attack.targets.load_with_parent`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from tcletd.attack.targets import Target, connect, end_child, load_with_parent
from tcletd.shared.control import FrameReader, encode, hello

SLOWLORIS_CONNECTIONS = 200
FLOOD_CONNECTIONS = 4
FLOOD_BURST = 200  # status requests written at once on a flood connection


class ControlAttack:
    """One control-socket attack in a process of its own (``python -m tcletd.attack.drivers``),
    from :meth:`start` to :meth:`stop`: a flooder in the tool's own process would load the
    loop that times the host's answers, and the tool would measure itself."""

    def __init__(self, target: Target, driver: str) -> None:
        if driver not in DRIVERS:
            raise ValueError(f"no such control attack: {driver}")
        self.driver = driver
        self._path = target.path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tcletd.attack.drivers", self.driver, str(self._path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            preexec_fn=load_with_parent,
        )  # fmt: skip

    @property
    def pid(self) -> int | None:
        """Its client's process, once started."""
        return self._proc.pid if self._proc is not None else None

    async def stop(self) -> None:
        await end_child(self._proc)


DRIVERS = ("control-slowloris", "status-flood")


class Flooder:
    """The attack itself, run by ``python -m tcletd.attack.drivers DRIVER SOCKET``."""

    def __init__(self, target: Target, driver: str) -> None:
        self.driver = driver
        self._target = target
        self._tasks: list[asyncio.Task[None]] = []
        # Checked by every loop as well as cancelling it: Python 3.11's wait_for can swallow a
        # cancellation that races with its result, and a flooder must not outlive its attack.
        self._stopping = False

    async def start(self) -> None:
        if self.driver == "control-slowloris":
            self._tasks = [
                asyncio.ensure_future(self._hold_half_frame()) for _ in range(SLOWLORIS_CONNECTIONS)
            ]
        else:
            self._tasks = [asyncio.ensure_future(self._flood()) for _ in range(FLOOD_CONNECTIONS)]
        await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task

    async def _hold_half_frame(self) -> None:
        """One connection holding half a frame; when the host closes it, another."""
        while not self._stopping:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await connect(self._target.path)
                writer.write(hello() + b'{"op":"run","size":1000000}\n' + b"puts x;" * 10)
                await writer.drain()
                while await reader.read(1 << 16):  # until the host closes it
                    pass
            except (OSError, TimeoutError):
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(0.05)

    async def _flood(self) -> None:
        """Bursts of ``status`` on one connection, the next burst as soon as the last is
        answered; a new connection when the host closes this one."""
        burst = encode({"op": "status"}) * FLOOD_BURST
        while not self._stopping:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await connect(self._target.path)
                writer.write(hello())
                frames = FrameReader(1 << 20)
                while not self._stopping:
                    writer.write(burst)
                    await writer.drain()
                    answered = 0
                    while answered < FLOOD_BURST and not self._stopping:
                        data = await reader.read(1 << 16)
                        if not data:
                            raise ConnectionResetError("closed by the host")
                        answered += sum(
                            1
                            for head, _ in frames.feed(data)
                            if head.get("event") == "status" and head.get("more") is not True
                        )
            except (OSError, TimeoutError, ValueError):
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(0.01)


async def _run(driver: str, path: str) -> None:
    flooder = Flooder(Target(Path(path), kind="resident", policy="home", dns=False), driver)
    await flooder.start()
    await asyncio.Event().wait()  # until SIGTERM


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in DRIVERS:
        print(
            f"usage: python -m tcletd.attack.drivers {{{','.join(DRIVERS)}}} SOCKET",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(_run(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
