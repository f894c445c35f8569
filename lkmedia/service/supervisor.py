"""Each egress job in its own process, supervised by the service.

``JobProcess`` is the service's handle on one job process (lkmedia.egress.runner): it
hands the job its request over a socketpair, relays every status the job sets to the
service in order, asks it to stop, update its streams or fail (``kill``: outputs still
finalised), and SIGKILLs it when it does not end in time. A job that crashes takes only
itself down; the service reports it from what it wrote (``EgressJob.recover``).

``Spawner`` keeps one process started ahead of need: the ~1 s of imports is paid while
nothing waits, and a StartEgress runs its job at once.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.protocol import egress as lk

from ..egress.errors import EgressError
from ..egress.ipc import Channel, pack, unpack

log = logging.getLogger("lkmedia.service.supervisor")
S = lk.EgressStatus
TERMINAL = (S.EGRESS_COMPLETE, S.EGRESS_FAILED, S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED)
REQUEST_TIMEOUT = 8.0  # a job's answer to stop / update_stream (inside livekit-server's 10 s)

UpdateFn = Callable[[lk.EgressInfo], Awaitable[None]]


class JobProcess:
    """One job process. ``run()`` returns when the process has exited."""

    def __init__(self, proc: asyncio.subprocess.Process, chan: Channel) -> None:
        self.proc, self.chan = proc, chan
        self.pid = proc.pid
        self.info = lk.EgressInfo()
        self.result = ""  # the supervisor's verdict for the metrics: stopped_cpu, killed_oom, ...
        self.kill_error = ""  # why it was killed, if it was
        self.done = False  # the job said it has ended
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._killer: asyncio.Task[None] | None = None

    @classmethod
    async def spawn(cls) -> JobProcess:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lkmedia.egress.runner", str(theirs.fileno()), str(os.getpid()),
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

    async def run(self, start: dict[str, Any], info: lk.EgressInfo, on_update: UpdateFn) -> int:
        """Give the process its job; relay its updates to ``on_update`` one by one, in
        order, until it exits. Returns its exit status (negative: killed by that signal)."""
        self.info = info
        try:
            await self.chan.send({"t": "start", **start, "info": pack(info.SerializeToString())})
            while (msg := await self.chan.receive()) is not None:
                t = msg.get("t")
                if t == "update":
                    self.info = lk.EgressInfo.FromString(unpack(msg["info"]))
                    await on_update(self.info)  # replaced, never changed in place, by later updates
                elif t == "reply":
                    fut = self._replies.pop(int(msg.get("id") or 0), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif t == "done":
                    self.done = True
        except (ConnectionError, OSError) as e:
            log.warning("egress %s: its process channel broke: %s", self.info.egress_id, e)
        finally:
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(EgressError("the egress process has ended", "unavailable"))
            self._replies.clear()
            await self.chan.close()
        code = await self.proc.wait()
        if self._killer is not None:
            self._killer.cancel()
            await asyncio.gather(self._killer, return_exceptions=True)
        return code

    async def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if not self.alive:
            raise EgressError("the egress process has ended", "unavailable")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        try:
            await self.chan.send({**msg, "id": rid})
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await fut
        except (ConnectionError, OSError):
            raise EgressError("the egress process has ended", "unavailable") from None
        except TimeoutError:
            raise EgressError(f"the egress process did not answer {msg['t']} within {REQUEST_TIMEOUT:g} s",
                              "deadline_exceeded") from None
        finally:
            self._replies.pop(rid, None)
        if reply.get("error"):
            raise EgressError(reply["error"], reply.get("code") or "internal")
        self.info = lk.EgressInfo.FromString(unpack(reply["info"]))
        return reply

    async def stop(self, reason: str = "StopEgress API") -> lk.EgressInfo:
        """Drain: ENDING now, COMPLETE once every output is finalised (the job reports it)."""
        if self.alive and not self.done:
            try:
                await self._request({"t": "stop", "reason": reason})
            except EgressError as e:
                log.warning("egress %s: stop: %s", self.info.egress_id, e)
        return self.info

    async def update_stream(self, add: list[str], remove: list[str]) -> lk.EgressInfo:
        await self._request({"t": "update_stream", "add": add, "remove": remove})
        return self.info

    def kill(self, error: str, result: str, timeout: float) -> None:
        """End the job FAILED with ``error``; the job finalises and uploads its outputs as
        on a stop. A job that has not answered ``timeout`` seconds later is hung: it gets
        SIGKILL, and the service reports it from the files it wrote."""
        if self._killer is not None or not self.alive:
            return
        self.result, self.kill_error = result, error

        async def escalate() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await self._request({"t": "kill", "error": error})
                return  # it answered: it finalises like a stopped job
            except (TimeoutError, EgressError) as e:
                log.error("egress %s: no answer to its kill (%s): SIGKILL", self.info.egress_id, e or "timeout")
            self.signal(signal.SIGKILL)

        self._killer = asyncio.get_running_loop().create_task(escalate(), name=f"kill:{self.pid}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    async def close(self) -> None:
        """Dismiss a spare that got no job (it exits on the channel's EOF)."""
        await self.chan.close()
        try:
            async with asyncio.timeout(5):
                await self.proc.wait()
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.proc.wait()


class Spawner:
    """Job processes on demand, one kept started ahead (``spare``).

    The spare that replaces a taken one starts ``refill_delay`` seconds later, so that its
    imports (about a CPU second) do not compete with the job that is starting; a start
    that comes within that delay spawns at once."""

    def __init__(self, spare: bool = True, refill_delay: float = 3.0,
                 spawn: Callable[[], Awaitable[JobProcess]] | None = None) -> None:
        self.spare = spare
        self.refill_delay = refill_delay
        self._spawn = spawn or JobProcess.spawn
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
        proc: JobProcess | None = None
        if nxt is not None:
            try:
                proc = await nxt
            except Exception as e:
                log.warning("the spare job process could not start: %s", e)
            if proc is not None and not proc.alive:
                proc = None
        if proc is None:
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
