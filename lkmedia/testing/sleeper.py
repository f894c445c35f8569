"""A job kind's child side for the worker's own tests (a lkmedia.worker.kind.Runner): each
job reports ACTIVE with its process id, waits ``seconds`` or a stop, then reports COMPLETE;
one with ``crash`` set kills its whole process with SIGKILL once ACTIVE."""
from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from typing import Any

from livekit.protocol import egress as lk

from ..worker.kind import Report


@dataclass
class SleepSpec:
    job_id: str
    seconds: float
    crash: bool = False


spec_type = SleepSpec
info_type = lk.EgressInfo


class SleepJob:
    def __init__(self, spec: SleepSpec, info: lk.EgressInfo, report: Report) -> None:
        self.spec, self.info, self.report = spec, info, report
        self._stop = asyncio.Event()

    async def _set(self, status: int, details: str = "") -> None:
        self.info.status = status  # type: ignore[assignment]
        self.info.details = details
        await self.report(self.info)

    async def run(self) -> None:
        await self._set(lk.EGRESS_ACTIVE, f"pid {os.getpid()}")
        if self.spec.crash:
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            async with asyncio.timeout(self.spec.seconds):
                await self._stop.wait()
        except TimeoutError:
            pass
        await self._set(lk.EGRESS_COMPLETE, f"pid {os.getpid()}")

    async def stop(self, reason: str) -> None:
        self._stop.set()

    async def kill(self, error: str) -> None:
        self._stop.set()

    async def request(self, op: str, args: dict[str, Any]) -> dict[str, Any] | None:
        return {"pid": os.getpid(), "op": op}


def job(spec: SleepSpec, info: lk.EgressInfo, report: Report) -> SleepJob:
    return SleepJob(spec, info, report)


async def recover(spec: SleepSpec, info: lk.EgressInfo, cause: str, report: Report) -> lk.EgressInfo:
    info.status = lk.EGRESS_FAILED
    info.error = cause
    await report(info)
    return info
