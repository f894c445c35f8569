"""Shared job processes: many light jobs (track egress) in one process, so that a hundred
of them do not cost a hundred interpreters.

A host is ``python -m lkmedia.worker.child --host CTRL PARENT_PID MODULE...``. For each job
the service makes a socketpair, passes the child's end to a host over the host's control
socket (SCM_RIGHTS) and keeps its own end: from there the job's messages are exactly those
of a job in its own process (lkmedia.worker.child), and the supervisor drives it the same
way. ``HostPool.take`` gives a ``JobProcess`` whose ``proc`` is a ``Lane``: its pid is the
host's; it has ended when its channel has (a job that said Done) or when the host died
(then with the host's exit status, so every job of a crashed host is reported as crashed,
and only those); SIGKILL, sent when a job stops answering pings (its host's event loop is
stuck, which stops every job in it), kills the host.

A host takes at most ``per_process`` jobs at once; one is started ahead of need. A host
that has served ``RETIRE_AFTER`` jobs takes no more and exits once its last one ends, so
that nothing one job left behind (memory, threads) accumulates for ever.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from .messages import Channel
from .process import JobProcess, spare

log = logging.getLogger("lkmedia.worker.host")

RETIRE_AFTER = 500  # jobs a host serves before it takes no more
HOST_EXIT_GRACE = 0.5  # seconds to see a host exit after a lane's channel closed (a crash, not a Done)


class _Host:
    def __init__(self, proc: asyncio.subprocess.Process, ctrl: socket.socket) -> None:
        self.proc, self.ctrl = proc, ctrl
        self.pid = proc.pid
        self.lanes = 0  # jobs running in it
        self.served = 0
        self.exited: asyncio.Task[int] = asyncio.get_running_loop().create_task(proc.wait(), name=f"host-{self.pid}")

    @classmethod
    async def spawn(cls, preload: Sequence[str]) -> _Host:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lkmedia.worker.child", "--host", str(theirs.fileno()), str(os.getpid()),
                *preload, pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        log.info("job host %d started", proc.pid)
        return cls(proc, ours)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @property
    def open(self) -> bool:
        """Takes new jobs: alive and not retired."""
        return self.alive and self.ctrl.fileno() >= 0 and self.served < RETIRE_AFTER

    async def add(self) -> JobProcess:
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(self.ctrl, [b"j"], [theirs.fileno()])  # (a few bytes on a local socket: never blocks)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.lanes += 1
        self.served += 1
        return JobProcess(Lane(self), await Channel.open(ours))  # type: ignore[arg-type]  # (a Lane acts as the process)

    def lane_ended(self) -> None:
        self.lanes -= 1
        if self.lanes == 0 and self.served >= RETIRE_AFTER:
            self.close_ctrl()  # retired and idle: it exits

    def close_ctrl(self) -> None:
        with contextlib.suppress(OSError):
            self.ctrl.close()

    async def close(self, timeout: float) -> None:
        """No more jobs: it exits once its jobs have ended; SIGKILL after ``timeout``."""
        self.close_ctrl()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.exited)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.exited


class Lane:
    """One job's share of a host, standing in for its process (pid, returncode, wait,
    send_signal)."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.pid = host.pid
        self._rc: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._rc if self._rc is not None else self.host.proc.returncode

    async def wait(self, done: bool = False) -> int:
        """Once its channel has closed: the host's exit status if it died with it, else 0
        (at once if the job said Done: its host is not dying with it)."""
        if self._rc is None:
            rc = self.host.proc.returncode
            if rc is None and not done:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOST_EXIT_GRACE):
                        rc = await asyncio.shield(self.host.exited)
            if self._rc is None:
                self._rc = rc if rc is not None else 0
                self.host.lane_ended()
        return self._rc

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            log.error("job host %d: SIGKILL (its %d job(s) end with it)", self.pid, self.host.lanes)
        with contextlib.suppress(ProcessLookupError):
            self.host.proc.send_signal(sig)


class HostPool:
    """Takes like a ``Spawner``: a job's place in a host with room, a host started when none
    has; one host is kept started ahead of need."""

    def __init__(self, per_process: int, preload: Sequence[str] = ()) -> None:
        self.per_process, self.preload = per_process, tuple(preload)
        self.hosts: list[_Host] = []
        self._lock = asyncio.Lock()
        self._spawning: asyncio.Task[_Host] | None = None

    def start(self) -> None:
        self._spawning = asyncio.get_running_loop().create_task(_Host.spawn(self.preload), name="job-host")

    async def _host(self) -> _Host:
        self.hosts = [h for h in self.hosts if h.alive]
        for h in self.hosts:
            if h.open and h.lanes < self.per_process:
                return h
        nxt, self._spawning = self._spawning, None
        host = await spare(nxt, "job host")
        if host is None or not host.alive:
            host = await _Host.spawn(self.preload)
        self.hosts.append(host)
        self.start()  # the next one, ahead of need
        return host

    async def take(self) -> JobProcess:
        async with self._lock:
            host = await self._host()
            return await host.add()

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.hosts if h.alive]

    async def close(self, timeout: float = 5.0) -> None:
        if self._spawning is not None:
            self._spawning.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self.hosts.append(await self._spawning)
            self._spawning = None
        await asyncio.gather(*(h.close(timeout) for h in self.hosts), return_exceptions=True)
        self.hosts.clear()
