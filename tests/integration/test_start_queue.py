"""The start queue's submit (lkmedia.worker.pump) against a real redis-server.

Was (CI, a 15 s stall of the whole machine during test_fleet): a StartEgress whose
CreateEgress to livekit-server failed had already claimed its egress id; livekit-server's
retry of the same request was answered "asked again" with nothing queued anywhere, and the
egress stayed STARTING for ever. Now a submit that fails before its request is queued
gives its claim back, and the retry queues it."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis
from livekit.protocol import egress as lk

from lkmedia.worker.pump import QueuePump
from lkmedia.worker.queue import StartQueue

from .test_rpc_redis import Redis


@dataclass
class Spec:
    job_id: str


class Kind:
    name = "egress"
    info_type = lk.EgressInfo

    def dedup_key(self, spec: Spec) -> str:
        return "room:participant"

    def queued(self, info: lk.EgressInfo, position: int) -> lk.EgressInfo:
        out = lk.EgressInfo.FromString(info.SerializeToString())
        out.details = f"queued, position {position}"
        return out


class Hooks:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.created: list[str] = []

    async def create(self, info: lk.EgressInfo) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("IOInfo.CreateEgress: 500 Internal Server Error")
        self.created.append(info.egress_id)

    async def track(self, job_id: str) -> None: ...

    async def relay(self, info: lk.EgressInfo) -> None: ...


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[StartQueue]:
    server = Redis(tmp_path)
    server.start()
    r = aioredis.Redis(port=server.port)
    try:
        yield StartQueue(r, "NE_test")
    finally:
        await r.aclose()
        server.stop()


def _pump(queue: StartQueue, hooks: Hooks) -> QueuePump:
    worker: Any = SimpleNamespace(queue=queue, kind=Kind(), hooks=hooks, settings=SimpleNamespace(dispatcher=True),
                                  jobs={})
    return QueuePump(worker)


async def test_a_retry_after_a_failed_submit_queues_the_request(queue: StartQueue) -> None:
    hooks = Hooks(failures=1)
    pump = _pump(queue, hooks)
    info = lk.EgressInfo(egress_id="EG_retry", room_name="room")
    with pytest.raises(ConnectionError):
        await pump.submit("EG_retry", Spec("EG_retry"), info)
    answer = await pump.submit("EG_retry", Spec("EG_retry"), info)  # livekit-server's retry
    assert await queue.positions() == {"EG_retry": 1}
    assert hooks.created == ["EG_retry"]
    assert isinstance(answer, lk.EgressInfo) and answer.details == "queued, position 1"


async def test_a_retry_after_a_queued_submit_is_answered_not_queued_twice(queue: StartQueue) -> None:
    hooks = Hooks(failures=0)
    pump = _pump(queue, hooks)
    info = lk.EgressInfo(egress_id="EG_once", room_name="room")
    first = await pump.submit("EG_once", Spec("EG_once"), info)
    again = await pump.submit("EG_once", Spec("EG_once"), info)
    assert await queue.positions() == {"EG_once": 1} and hooks.created == ["EG_once"]
    assert isinstance(first, lk.EgressInfo) and isinstance(again, lk.EgressInfo)
    assert again.egress_id == "EG_once"
