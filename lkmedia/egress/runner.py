"""The egress job kind's child side (a lkmedia.worker.kind.Runner): what a job process
(lkmedia.worker.child) runs for an egress. Importing it loads the media stack, which a
spare process does while it waits.
"""
from __future__ import annotations

from livekit.protocol import egress as lk

from ..worker.kind import Report
from .job import EgressJob
from .recovery import recover as _recover
from .spec import EgressLaunch

spec_type = EgressLaunch
info_type = lk.EgressInfo


def job(spec: EgressLaunch, info: lk.EgressInfo, report: Report) -> EgressJob:
    return EgressJob(spec, info, report)


async def recover(spec: EgressLaunch, info: lk.EgressInfo, cause: str, report: Report) -> lk.EgressInfo:
    return await _recover(spec, info, cause, report)
