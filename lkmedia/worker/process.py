"""Job processes: ``JobProcess`` is the service's handle on one (``python -m
lkmedia.worker.child``, a socketpair between them), ``Spawner`` keeps one started ahead of
need so that a start does not wait for the imports (about a CPU second).

The spare that replaces a taken one starts ``refill_delay`` seconds later, so that its
imports do not compete with the job that is starting; a start within that delay spawns
at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .messages import Channel, Message

log = logging.getLogger("lkmedia.worker.process")


class JobProcess:
    """One child process and its channel. ``send`` / ``receive`` messages; ``wait`` for exit."""

    def __init__(self, proc: asyncio.subprocess.Process, chan: Channel) -> None:
        self.proc, self.chan = proc, chan
        self.pid = proc.pid

    @classmethod
    async def spawn(cls, preload: Sequence[str] = ()) -> JobProcess:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lkmedia.worker.child", str(theirs.fileno()), str(os.getpid()), *preload,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(proc, await Channel.open(ours))

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def send(self, msg: Message) -> None:
        await self.chan.send(msg)

    async def receive(self) -> Message | None:
        return await self.chan.receive()

    async def wait(self, done: bool = False) -> int:
        """Its exit status (negative: killed by that signal). ``done``: the job said Done,
        so a job sharing a host process has ended cleanly without waiting for the host."""
        if done and hasattr(self.proc, "host"):  # (a host.Lane)
            return await self.proc.wait(done=True)  # type: ignore[call-arg]
        return await self.proc.wait()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the channel (a waiting child exits on its EOF); SIGKILL after ``timeout``."""
        await self.chan.close()
        try:
            async with asyncio.timeout(timeout):
                await self.proc.wait()
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


SpawnFn = Callable[[], Coroutine[Any, Any, JobProcess]]
T = TypeVar("T")


async def spare(started: asyncio.Task[T] | None, what: str) -> T | None:
    """What a ``what`` started ahead of need became: None if none was started or it could
    not start (logged)."""
    if started is None:
        return None
    try:
        return await started
    except Exception as e:
        log.warning("the spare %s could not start: %s", what, e)
        return None


class Spawner:
    """Job processes on demand, one kept started ahead (``spare``)."""

    def __init__(self, spare: bool = True, refill_delay: float = 3.0, preload: Sequence[str] = (),
                 spawn: SpawnFn | None = None) -> None:
        self.spare = spare
        self.refill_delay = refill_delay
        self._spawn: SpawnFn = spawn or (lambda: JobProcess.spawn(preload))
        self._next: asyncio.Task[JobProcess] | None = None
        self._refill: asyncio.TimerHandle | None = None  # the next spare, not started yet

    def _prepare(self) -> None:
        self._refill = None
        if self.spare and self._next is None:
            self._next = asyncio.get_running_loop().create_task(self._spawn(), name="spare-job-process")

    def start(self) -> None:
        self._prepare()

    async def take(self) -> JobProcess:
        if self._refill is not None:  # a start within the refill delay: no spare to wait for
            self._refill.cancel()
            self._refill = None
        nxt, self._next = self._next, None
        proc = await spare(nxt, "job process")
        if proc is None or not proc.alive:
            proc = await self._spawn()
        if self.spare and self._refill is None and self._next is None:  # (one refill for concurrent takes)
            self._refill = asyncio.get_running_loop().call_later(self.refill_delay, self._prepare)
        return proc

    async def close(self) -> None:
        if self._refill is not None:
            self._refill.cancel()
            self._refill = None
        nxt, self._next = self._next, None
        if nxt is None:
            return
        nxt.cancel()
        try:
            proc = await nxt
        except (asyncio.CancelledError, Exception):
            return
        await proc.close()
