"""One job under supervision, from its process start to a final Info relayed.

The supervisor hands the job process its spec, relays every Info the job sends (in the
job's order, through a small queue, so that a slow relay never stops it reading), hears its
heartbeat (a Pong every ``ping_interval`` s, sent unasked: a ping would cost both processes
a wake-up more per interval) and kills a process whose heartbeat stops, asks it to stop,
to kill itself (outputs still finalised) or to carry out a kind's own request, and
SIGKILLs it when a kill is not answered. A process that ends without a final Info
(crashed, killed, hung) is reported from what it left: a fresh job process runs the kind's
recovery (``Recover``), off this event loop. It alone writes the job's ``job.json`` and
removes it at the end.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from ..core.clock import sleep_to_tick
from . import codec
from .host import HostPool
from .kind import JobError, JobKind
from .messages import Done, Kill, Pong, Recover, Reply, Request, Start, Status, Stop
from .process import JobProcess, Spawner
from .record import JobRecord

log = logging.getLogger("lkmedia.worker.supervisor")

REQUEST_TIMEOUT = 8.0  # a job's answer to stop / kill / a request (inside livekit-server's 10 s)
RELAY_BACKLOG = 32  # Infos waiting to be relayed; older ones are superseded by the newest

Relay = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Liveness:
    ping_interval: float = 1.0
    ping_timeout: float = 10.0  # a process that has not answered for this long is hung
    start_timeout: float = 60.0  # for the first answer (a process still importing)


@dataclass(frozen=True)
class Logging:
    level: str = "info"
    json: bool = False


class Supervisor:
    def __init__(self, kind: JobKind[Any], spec: Any, info: Message, *, spawner: Spawner | HostPool, job_dir: str,
                 node_id: str, relay: Relay, liveness: Liveness = Liveness(), logs: Logging = Logging()) -> None:
        self.kind, self.spec = kind, spec
        self.job_id = kind.job_id(spec)
        self.info = info  # the latest Info the job sent (relayed, or about to be)
        self.spawner, self.job_dir, self.node_id = spawner, job_dir, node_id
        self.relay, self.liveness, self.logs = relay, liveness, logs
        self.process: JobProcess | None = None
        self.result = ""  # the verdict for the metrics when it was stopped or killed: stopped_cpu, ...
        self.kill_error = ""  # why it was killed, if it was
        self.started_at = time.monotonic()
        self._seq = 0
        self._replies: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()  # the process has its Start
        self._done = False  # the process said Done
        self._last_answer = 0.0
        self._ponged = False  # the current process has answered a ping
        self._backlog: deque[Message] = deque()
        self._wake = asyncio.Event()
        self._killer: asyncio.Task[None] | None = None
        self._early_stop = ""  # a stop that came before the process had its Start

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def shared(self) -> bool:
        """It runs in a shared process (lkmedia.worker.host): its pid is not its own."""
        return isinstance(self.spawner, HostPool)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive and not self._done

    # -- running ------------------------------------------------------------------------
    async def run(self, recover: str | None = None) -> Message:
        """Run the job (or, with ``recover``, only report it from its files with that cause)
        until a final Info is relayed; returns it."""
        relay = asyncio.get_running_loop().create_task(self._relay_all(), name=f"relay:{self.job_id}")
        try:
            if recover is None:
                await self._drive(Start(self.kind.runner, codec.encode(self.kind.launch(self.spec)),
                                        self.info.SerializeToString(),
                                        self.logs.level, self.logs.json, self.liveness.ping_interval))
                if not self.kind.is_final(self.info):
                    recover = self.kill_error or self._exit_cause()
                    log.error("%s %s: %s: reporting what it wrote", self.kind.name, self.job_id, recover)
                    self.result = self.result or "process_error"
            if recover is not None:
                await self._recover(recover)
        finally:
            self._wake.set()
            self._backlog.append(_END)
            await relay
            if self._killer is not None:
                self._killer.cancel()
                await asyncio.gather(self._killer, return_exceptions=True)
        return self.info

    def _exit_cause(self) -> str:
        code = self.process.proc.returncode if self.process is not None else None
        how = (f"was killed by signal {-code}" if code is not None and code < 0
               else f"exited with status {code}" if code is not None else "did not start")
        return f"the {self.kind.name} process {how} before it finished"

    async def _recover(self, cause: str) -> None:
        before = self.info
        try:
            await self._drive(Recover(self.kind.runner, codec.encode(self.kind.launch(self.spec)),
                                      self.info.SerializeToString(), cause, self.logs.level, self.logs.json,
                                      self.liveness.ping_interval))
        except Exception as e:
            log.error("%s %s: recovery failed: %s", self.kind.name, self.job_id, e)
        if not self.kind.is_final(self.info):  # recovery itself failed: say so, with the cause
            self._take(self.kind.ended(before, "failed", f"{cause}; its output could not be recovered"))

    async def _drive(self, first: Start | Recover) -> None:
        """One process from the spare to its exit: its first message, then read and watch."""
        self._ready.clear()
        self._done = False
        self._seq = 0  # each process numbers its own Infos
        self._ponged = False
        proc = self.process = await self.spawner.take()
        JobRecord(self.kind.name, codec.encode(self.spec), self.info.SerializeToString(), proc.pid,
                  self.node_id).write(self.job_dir)
        self._last_answer = time.monotonic()
        await proc.send(first)
        self._ready.set()
        if self._early_stop and isinstance(first, Start):
            await proc.send(Stop(0, self._early_stop))  # (its reply, id 0, is not waited for)
        pinger = asyncio.get_running_loop().create_task(self._watch(proc), name=f"watch:{self.job_id}")
        try:
            await self._read(proc)
        finally:
            pinger.cancel()
            await asyncio.gather(pinger, return_exceptions=True)
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(JobError("the job process has ended", "unavailable"))
            self._replies.clear()
            await proc.chan.close()
        await proc.wait(done=self._done)

    async def _read(self, proc: JobProcess) -> None:
        while (msg := await proc.receive()) is not None:
            self._last_answer = time.monotonic()
            if isinstance(msg, Status | Done):
                if msg.seq > self._seq and msg.info:
                    self._seq = msg.seq
                    self._take(self.kind.info_type.FromString(msg.info))
                self._done = self._done or isinstance(msg, Done)
            elif isinstance(msg, Reply):
                fut = self._replies.pop(msg.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif isinstance(msg, Pong):
                self._ponged = True  # its loop turns: from now on it answers within ping_timeout
            else:
                log.warning("%s %s: unexpected %s from its process", self.kind.name, self.job_id, type(msg).__name__)

    def _take(self, info: Message) -> None:
        """A newer Info: the current one from now on, relayed in order."""
        self.info = info
        if len(self._backlog) >= RELAY_BACKLOG:
            self._backlog.popleft()  # superseded: the newest says more
        self._backlog.append(info)
        self._wake.set()
        if self.kind.is_final(info):
            JobRecord.remove(self.job_dir)  # nothing left to recover: its outputs are where they go
        elif self.process is not None:
            with contextlib.suppress(OSError):
                JobRecord(self.kind.name, codec.encode(self.spec), info.SerializeToString(), self.process.pid,
                          self.node_id).write(self.job_dir)

    async def _relay_all(self) -> None:
        while True:
            while not self._backlog:
                self._wake.clear()
                await self._wake.wait()
            info = self._backlog.popleft()
            if info is _END:
                return
            try:
                await self.relay(info)
            except Exception as e:  # the relay retries on its own; a refusal is logged here
                log.error("%s %s: its status could not be relayed: %s", self.kind.name, self.job_id, e)

    async def _watch(self, proc: JobProcess) -> None:
        """SIGKILL a process that has sent nothing for ``ping_timeout`` s (its heartbeat
        included: a Pong every ``ping_interval`` s)."""
        lv = self.liveness
        while True:
            await sleep_to_tick(lv.ping_interval)  # (every job's watch in one wake-up)
            if self._done:
                return  # it said Done: nothing more to ask
            silent = time.monotonic() - self._last_answer
            limit = lv.ping_timeout if self._ponged else max(lv.start_timeout, lv.ping_timeout)
            if silent > limit and proc.alive and not self._done:
                self.kill_error = self.kill_error or f"the {self.kind.name} process stopped answering for {silent:.0f} s"
                self.result = self.result or "killed_hung"
                log.error("%s %s: %s: SIGKILL", self.kind.name, self.job_id, self.kill_error)
                proc.signal(signal.SIGKILL)
                return

    # -- control ------------------------------------------------------------------------
    async def _call(self, make: Callable[[int], Stop | Kill | Request]) -> Reply:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._ready.wait()
        except TimeoutError:
            raise JobError("the job process has not started", "unavailable") from None
        proc = self.process
        if proc is None or not proc.alive or self._done:
            raise JobError("the job process has ended", "unavailable")
        rid = next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        msg = make(rid)
        try:
            await proc.send(msg)
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reply = await fut
        except (ConnectionError, OSError):
            raise JobError("the job process has ended", "unavailable") from None
        except TimeoutError:
            raise JobError(f"the job process did not answer {type(msg).__name__} within {REQUEST_TIMEOUT:g} s",
                           "deadline_exceeded") from None
        finally:
            self._replies.pop(rid, None)
        if reply.error:
            raise JobError(reply.error, reply.code or "internal")
        return reply

    async def stop(self, reason: str) -> Message:
        """Drain: the job ends once every output is finalised. Returns its Info now. A job
        whose process has not got its Start yet is stopped as soon as it has."""
        if not self._ready.is_set():
            self._early_stop = self._early_stop or reason
            return self.info
        if not self._done:
            try:
                await self._call(lambda rid: Stop(rid, reason))
            except JobError as e:
                log.warning("%s %s: stop: %s", self.kind.name, self.job_id, e)
        return self.info

    async def request(self, op: str, args: dict[str, Any]) -> Message:
        """A kind's own call (UpdateStream); JobError when the job refuses it."""
        await self._call(lambda rid: Request(rid, op, args))
        return self.info

    async def ask(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """A kind's own call whose answer is wanted (a WHIP session's SDP answer)."""
        return (await self._call(lambda rid: Request(rid, op, args))).result

    def kill(self, error: str, result: str, timeout: float) -> None:
        """End FAILED with ``error``, outputs finalised; a job that does not answer within
        ``timeout`` s gets SIGKILL and is reported from its files."""
        if self._killer is not None or self._done:
            return
        self.result, self.kill_error = result, error

        async def escalate() -> None:
            try:
                async with asyncio.timeout(timeout):
                    await self._call(lambda rid: Kill(rid, error))
                return  # it answered: it finalises like a stopped job
            except (TimeoutError, JobError) as e:
                log.error("%s %s: no answer to its kill (%s): SIGKILL", self.kind.name, self.job_id, e or "timeout")
            self.signal(signal.SIGKILL)

        self._killer = asyncio.get_running_loop().create_task(escalate(), name=f"kill:{self.job_id}")

    def signal(self, sig: int) -> None:
        if self.process is not None:
            self.process.signal(sig)


_END: Any = object()  # closes the relay queue
