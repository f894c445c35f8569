"""Drain: the egress service as its own process (``python -m lkmedia egress``) gets SIGTERM
during two recordings. It takes no new request, lets both run until they are stopped,
both end COMPLETE with their full duration, then it exits 0. A second signal stops the
jobs at once, each output finalised."""
from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.probe import decode_errors, probe
from lkmedia.testing.egress import EgressServiceProcess, S, service_config_body, wait_egress

# Room for two participant egresses on this 2-core machine (the Go default cost is 2 CPUs each).
TWO_JOBS = "cpu_cost:\n  participant_cpu_cost: 0.5\n  max_cpu_utilization: 0.9\n"


async def _start_two(lkapi: api.LiveKitAPI, room: str) -> list[str]:
    ids = []
    for i in range(2):
        info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
            room_name=room, identity="pub", file_outputs=[lk.EncodedFileOutput(filepath=f"drain-{i}.mp4")]))
        ids.append(info.egress_id)
    for eid in ids:
        await wait_egress(lkapi, eid, {S.EGRESS_ACTIVE}, 30)
    return ids


def _check_file(info: lk.EgressInfo, recorded: float) -> None:
    (f,) = info.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio"), p
    assert p.duration is not None and abs(p.duration - recorded) <= 1.0, (p.duration, recorded)
    assert decode_errors(f.location) == ""


async def test_sigterm_lets_running_recordings_finish_then_exits_0(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    with EgressServiceProcess(service_config_body(livekit_stack, TWO_JOBS), tmp_path / "svc") as svc:
        async with livekit_stack.api() as lkapi:
            ids = await _start_two(lkapi, room_name)
            t_active = time.monotonic()
            await asyncio.sleep(1.0)
            svc.signal(signal.SIGTERM)
            await asyncio.sleep(3.0)
            # Draining: still recording, both still ACTIVE.
            assert svc.alive(), svc.tail()
            for eid in ids:
                res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=eid))
                assert res.items[0].status == S.EGRESS_ACTIVE, S.Name(res.items[0].status)
            for eid in ids:
                await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=eid))
            recorded = time.monotonic() - t_active
            done = [await wait_egress(lkapi, eid, {S.EGRESS_COMPLETE}, 60) for eid in ids]
        rc = await asyncio.to_thread(svc.wait, 30)
    assert rc == 0, svc.tail()
    for info in done:
        _check_file(info, recorded)


async def test_second_signal_stops_the_jobs_cleanly(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    with EgressServiceProcess(service_config_body(livekit_stack, TWO_JOBS), tmp_path / "svc") as svc:
        async with livekit_stack.api() as lkapi:
            ids = await _start_two(lkapi, room_name)
            t_active = time.monotonic()
            await asyncio.sleep(3.0)
            svc.signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            svc.signal(signal.SIGTERM)  # the second: stop now
            recorded = time.monotonic() - t_active
            rc = await asyncio.to_thread(svc.wait, 60)
            done = [await wait_egress(lkapi, eid, {S.EGRESS_COMPLETE}, 10) for eid in ids]
    assert rc == 0, svc.tail()
    for info in done:
        assert "shutdown" in info.details or info.details == "", info.details
        _check_file(info, recorded)
