"""Redis restarted under a worker during two recordings (issue 4): the worker reconnects
and resubscribes, the recordings are untouched and both complete with their full
duration, and the worker then takes the next request. Redis runs with an fsynced
append-only file, as docs/deployment.md asks for production (the queue and livekit-server's
own state survive the restart)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from livekit.protocol import egress as lk

from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack
from lkmedia.probe import decode_errors, probe
from lkmedia.testing.egress import EgressServiceProcess, S, service_config_body, wait_egress

TWO_JOBS = "cpu_cost:\n  participant_cpu_cost: 0.5\n  max_cpu_utilization: 0.9\n"
SMALL = lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800)


def _request(room: str, name: str) -> lk.ParticipantEgressRequest:
    return lk.ParticipantEgressRequest(room_name=room, identity="pub", advanced=SMALL,
                                       file_outputs=[lk.EncodedFileOutput(filepath=f"{name}.mp4")])


async def test_recordings_survive_a_redis_restart(tmp_path: Path) -> None:
    room = "outage"
    with DevStack(redis_persistent=True, workdir=tmp_path / "stack") as stack:
        async with PublisherProcess(stack.url, stack.token("pub", room)), \
                stack.api() as lkapi:
            with EgressServiceProcess(service_config_body(stack, TWO_JOBS), tmp_path / "w") as worker:
                ids = []
                for i in range(2):
                    info = await lkapi.egress.start_participant_egress(_request(room, f"outage-{i}"))
                    ids.append(info.egress_id)
                for eid in ids:
                    await wait_egress(lkapi, eid, {S.EGRESS_ACTIVE}, 30)
                t_active = time.monotonic()
                await asyncio.sleep(3.0)
                await asyncio.to_thread(stack.restart_redis, 1.0)
                assert stack.redis is not None and stack.redis.starts == 2
                await asyncio.sleep(5.0)
                assert worker.alive(), worker.tail()
                for eid in ids:
                    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=eid))
                recorded = time.monotonic() - t_active
                done = [await wait_egress(lkapi, eid, {S.EGRESS_COMPLETE}, 60) for eid in ids]
                # The worker serves on: the next request records too.
                nxt = await lkapi.egress.start_participant_egress(_request(room, "after"))
                await wait_egress(lkapi, nxt.egress_id, {S.EGRESS_ACTIVE}, 30)
                await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=nxt.egress_id))
                await wait_egress(lkapi, nxt.egress_id, {S.EGRESS_COMPLETE}, 30)
    for info in done:
        (f,) = info.file_results
        p = probe(f.location)
        assert p.has("video") and p.has("audio")
        assert p.duration is not None and abs(p.duration - recorded) <= 1.0, (p.duration, recorded)
        assert decode_errors(f.location) == ""
