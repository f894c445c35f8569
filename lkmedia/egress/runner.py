"""One egress job in its own process: ``python -m lkmedia.egress.runner FD PARENT_PID``.

The egress service (lkmedia.service.supervisor) starts it ahead of need; it imports the
media stack, then waits on its end of the socketpair ``FD`` for a ``start`` message. It
runs that one job (lkmedia.egress.job.EgressJob), sends every status to the service, and
exits. It never talks to Redis: the service alone does.

It dies with the service (PR_SET_PDEATHSIG): a worker killed with SIGKILL takes its jobs
with it, their fragmented MP4s playable up to the last fragment, and the restarted worker
reports them from their job.json. SIGINT is ignored (a Ctrl-C reaches the whole process
group; the service decides what stops); SIGTERM stops the job cleanly.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from typing import Any

log = logging.getLogger("lkmedia.egress.runner")
PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # not Linux: the socket's EOF still stops the job
        return
    if os.getppid() != parent:  # the service died before prctl took effect
        os._exit(1)


async def _serve(fd: int) -> int:
    from livekit.protocol import egress as lk

    from ..cli import setup_logging
    from ..rpc.messages import StartEgressRequest, unpack_start_egress
    from ..storage.factory import settings_from_yaml
    from .config import egress_config
    from .errors import EgressError
    from .ipc import Channel, pack, unpack
    from .job import EgressJob

    chan = await Channel.open(socket.socket(fileno=fd))
    start = await chan.receive()
    if start is None or start.get("t") != "start":
        return 0  # a spare the service no longer needs
    setup_logging(start.get("log_level", "info"), bool(start.get("json_log")), False)
    req = StartEgressRequest.FromString(unpack(start["request"]))
    _, inner = unpack_start_egress(req)
    cfg = egress_config(req.egress_id, req.room_id, inner)

    async def send_update(info: lk.EgressInfo) -> None:
        await chan.send({"t": "update", "info": pack(info.SerializeToString())})

    job = EgressJob(cfg, lk.EgressInfo.FromString(unpack(start["info"])), ws_url=start["ws_url"],
                    api_key=start["api_key"], api_secret=start["api_secret"], tmp_dir=start["tmp_dir"],
                    storage=settings_from_yaml(start.get("storage") or {}),
                    on_update=send_update, max_duration=float(start.get("max_duration", 0)))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(job.stop("SIGTERM")))
    task = job.start()

    async def reply(msg: dict[str, Any], info: lk.EgressInfo | None = None, **extra: Any) -> None:
        body = {"t": "reply", "id": msg.get("id"), **extra}
        if info is not None:
            body["info"] = pack(info.SerializeToString())
        await chan.send(body)

    async def commands() -> None:
        while True:
            msg = await chan.receive()
            if msg is None:  # the service closed the channel without a word: finish cleanly
                log.warning("egress %s: the service went away: stopping", cfg.egress_id)
                await job.stop("the egress service went away")
                return
            t = msg.get("t")
            try:
                if t == "stop":
                    await reply(msg, await job.stop(msg.get("reason") or "StopEgress API"))
                elif t == "kill":
                    await reply(msg, await job.kill(msg.get("error") or "killed"))
                elif t == "update_stream":
                    await reply(msg, job.update_stream(list(msg.get("add", [])), list(msg.get("remove", []))))
                else:
                    await reply(msg, error=f"unknown request {t!r}", code="invalid_argument")
            except (EgressError, ValueError) as e:
                await reply(msg, error=str(e), code=getattr(e, "code", "invalid_argument"))

    listener = loop.create_task(commands(), name="job-commands")
    try:
        await task
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
        with contextlib.suppress(ConnectionError, OSError):
            await chan.send({"t": "done"})
        await chan.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m lkmedia.egress.runner FD PARENT_PID (started by the egress service)",
              file=sys.stderr)
        return 2
    _die_with(int(argv[2]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from ..core.memory import tune_malloc

    tune_malloc()
    import lkmedia.egress.job  # noqa: F401  (the imports, done while the process waits as a spare)

    return asyncio.run(_serve(int(argv[1])))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
