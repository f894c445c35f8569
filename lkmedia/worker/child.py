"""One job in its own process: ``python -m lkmedia.worker.child FD PARENT_PID [MODULE...]``
(or, with ``--host``, many light jobs in one: ``_host``, lkmedia.worker.host).

The worker service (lkmedia.worker.process) starts it ahead of need; it imports the
MODULEs (a job kind's media stack), then waits on its end of the socketpair ``FD`` for a
``Start`` (or ``Recover``). It runs that one job with the kind's runner module, sends every
Info the job sets as a numbered ``Status``, sends a ``Pong`` from its event loop every
``heartbeat`` s (a loop that stops turning is found by the service; on the clock's shared
ticks, lkmedia.core.clock, so that it costs the job no wake-up of its own), then sends
``Done`` and exits. It never talks to Redis: the service alone does.

It dies with the service (PR_SET_PDEATHSIG); SIGINT is ignored (a Ctrl-C reaches the whole
process group; the service decides what stops); SIGTERM stops the job cleanly.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from google.protobuf.message import Message

from ..core.clock import sleep_to_tick
from . import codec
from .kind import Job, JobError
from .messages import Channel, Done, Kill, Pong, Recover, Reply, Request, Start, Status, Stop

log = logging.getLogger("lkmedia.worker.child")
PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # not Linux: the socket's EOF still stops the job
        return
    if os.getppid() != parent:  # the service died before prctl took effect
        os._exit(1)


class _Reporter:
    """Numbers and sends each Info the job sets; keeps the last for ``Done``."""

    def __init__(self, chan: Channel) -> None:
        self.chan = chan
        self.seq = 0
        self.last = b""

    async def __call__(self, info: Message) -> None:
        self.seq += 1
        self.last = info.SerializeToString()
        await self.chan.send(Status(self.seq, self.last))


async def _commands(chan: Channel, job: Job | None) -> None:
    """Answer the service until it closes the channel (then stop the job cleanly). While
    a dead job is recovered (``job`` None) every call is answered "unavailable"."""
    while True:
        msg = await chan.receive()
        if msg is None:
            if job is not None:
                log.warning("the service went away: stopping the job")
                await job.stop("the worker service went away")
            return
        if not isinstance(msg, Stop | Kill | Request):
            log.warning("unexpected %s from the service", type(msg).__name__)
            continue
        try:
            if job is None:
                raise JobError("the job is being recovered", "unavailable")
            result: dict[str, Any] | None = None
            if isinstance(msg, Stop):
                await job.stop(msg.reason)
            elif isinstance(msg, Kill):
                await job.kill(msg.error)
            else:
                result = await job.request(msg.op, msg.args)
            await chan.send(Reply(msg.id, result=result or {}))
        except JobError as e:
            await chan.send(Reply(msg.id, error=str(e), code=e.code))


async def _beat(chan: Channel, every: float) -> None:
    """A Pong every ``every`` s, unasked, until cancelled or the channel fails."""
    seq = 0
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            await sleep_to_tick(every)
            seq += 1
            await chan.send(Pong(seq))


class _Host:
    """What the jobs of one shared process (lkmedia.worker.host) share: logging set up once,
    and SIGTERM, which stops every one of them."""

    def __init__(self) -> None:
        self.logging = False
        self.jobs: set[Job] = set()

    def sigterm(self) -> None:
        loop = asyncio.get_running_loop()
        for job in list(self.jobs):
            loop.create_task(job.stop("SIGTERM"))


async def _serve(fd: int, host: _Host | None = None) -> int:
    from ..logs import setup_logging

    chan = await Channel.open(socket.socket(fileno=fd))
    first = await chan.receive()
    if not isinstance(first, Start | Recover):
        await chan.close()
        return 0  # a spare the service no longer needs
    if host is None or not host.logging:
        setup_logging(first.log_level, first.json_log, False)
        if host is not None:
            host.logging = True
    runner: Any = importlib.import_module(first.runner)
    spec = codec.decode(runner.spec_type, first.spec)
    info = runner.info_type.FromString(first.info)
    report = _Reporter(chan)
    loop = asyncio.get_running_loop()
    job: Job | None = None
    if isinstance(first, Start):
        job = runner.job(spec, info, report)
        if host is not None:
            host.jobs.add(job)
        else:
            stopping = job.stop
            loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(stopping("SIGTERM")))
    listener = loop.create_task(_commands(chan, job), name="job-commands")
    beat = loop.create_task(_beat(chan, first.heartbeat), name="job-heartbeat") if first.heartbeat > 0 else None
    try:
        if job is not None:
            await job.run()
        else:
            assert isinstance(first, Recover)
            await runner.recover(spec, info, first.cause, report)
    finally:
        if host is not None and job is not None:
            host.jobs.discard(job)
        for task in (listener, beat):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (listener, beat) if t is not None), return_exceptions=True)
        with contextlib.suppress(ConnectionError, OSError):
            await chan.send(Done(report.seq, report.last))
        await chan.finish()
        await chan.close()
    return 0


async def _serve_hosted(fd: int, host: _Host) -> None:
    """One job of a shared process: its failure ends it alone (the service sees its channel
    close without a final Info, as when a process of its own dies)."""
    try:
        await _serve(fd, host)
    except Exception:
        log.exception("a hosted job failed")


async def _host(ctrl_fd: int) -> int:
    """Jobs arrive as sockets on ``ctrl_fd`` (lkmedia.worker.host); each runs as in a process
    of its own. Once the service closes the control socket, the host exits when its jobs
    have ended."""
    ctrl = socket.socket(fileno=ctrl_fd)
    ctrl.setblocking(False)
    loop = asyncio.get_running_loop()
    # (the jobs' own blocking calls, uploads among them, share the default executor)
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="hosted"))
    host = _Host()
    tasks: set[asyncio.Task[None]] = set()
    closed = asyncio.Event()

    def readable() -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(ctrl, 16, 8)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            for fd in fds:
                task = loop.create_task(_serve_hosted(fd, host), name=f"hosted-job-{fd}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if not data:
                loop.remove_reader(ctrl_fd)
                closed.set()
                return

    loop.add_reader(ctrl_fd, readable)
    loop.add_signal_handler(signal.SIGTERM, host.sigterm)
    await closed.wait()
    while tasks:
        await asyncio.gather(*list(tasks), return_exceptions=True)
    ctrl.close()
    return 0


def main(argv: list[str]) -> int:
    hosting = len(argv) > 1 and argv[1] == "--host"
    if hosting:
        argv = argv[:1] + argv[2:]
    if len(argv) < 3:
        print("usage: python -m lkmedia.worker.child [--host] FD PARENT_PID [MODULE...] (started by the worker "
              "service)", file=sys.stderr)
        return 2
    _die_with(int(argv[2]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..core.memory import tune_malloc

    tune_malloc()
    for module in argv[3:]:  # the imports, done while the process waits as a spare
        importlib.import_module(module)
    return asyncio.run(_host(int(argv[1])) if hosting else _serve(int(argv[1])))


if __name__ == "__main__":
    code = main(sys.argv)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # A node stuck in a system call (a hung mount) keeps its thread: do not wait for it.
    os._exit(code)
