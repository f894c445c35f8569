"""The ingress job kind's child side (a lkmedia.worker.kind.Runner): what a job process
(lkmedia.worker.child) runs for one ingress session. Importing it loads the media stack,
which a spare process does while it waits.
"""
from __future__ import annotations

from livekit.protocol import ingress as lk

from ..worker.kind import Report
from .job import IngressJob
from .job import recover as _recover
from .spec import IngressLaunch

spec_type = IngressLaunch
info_type = lk.IngressInfo


def job(spec: IngressLaunch, info: lk.IngressInfo, report: Report) -> IngressJob:
    return IngressJob(spec, info, report)


async def recover(spec: IngressLaunch, info: lk.IngressInfo, cause: str, report: Report) -> lk.IngressInfo:
    return await _recover(spec, info, cause, report)
