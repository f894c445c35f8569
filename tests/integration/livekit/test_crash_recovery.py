"""A worker killed with SIGKILL 20 s into a recording (issue 4): the other worker sees its
lease lapse and ends the egress FAILED ("worker was lost"); when the killed one comes
back (a container restart keeps its volume) it reports the partial output, which plays at
least 18 s; the egress on the other worker is not disturbed."""
from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from livekit.protocol import egress as lk

from lkmedia.dev.stack import DevStack
from lkmedia.probe import decode_errors, probe
from lkmedia.testing.egress import EgressServiceProcess, S, service_config_body, wait_egress

# One participant egress per worker (the second request waits for the other worker).
ONE_JOB = "cpu_cost:\n  participant_cpu_cost: 1.5\n  max_cpu_utilization: 0.9\n"
SMALL = lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800)


async def test_sigkill_mid_recording_keeps_the_partial_output(
        livekit_stack: DevStack, publisher: object, room_name: str, tmp_path: Path) -> None:
    body = service_config_body(livekit_stack, ONE_JOB)
    w1 = EgressServiceProcess(body, tmp_path / "w1", name="w1").start()
    w2 = EgressServiceProcess(body, tmp_path / "w2", name="w2").start()
    try:
        async with livekit_stack.api() as lkapi:
            ids = []
            for i in range(2):
                info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                    room_name=room_name, identity="pub", advanced=SMALL,
                    file_outputs=[lk.EncodedFileOutput(filepath=f"crash-{i}.mp4")]))
                ids.append(info.egress_id)
            # Each is timed from its own ACTIVE as its service stamped it (not as polling saw it).
            actives = [await wait_egress(lkapi, eid, {S.EGRESS_ACTIVE}, 30) for eid in ids]
            t_active, t_active_other = (time.monotonic() - (time.time() - a.updated_at / 1e9) for a in actives)
            victim = w1 if (w1.egress_dir / ids[0]).is_dir() else w2
            other = w2 if victim is w1 else w1
            assert (victim.egress_dir / ids[0]).is_dir() and (other.egress_dir / ids[1]).is_dir()
            await asyncio.sleep(20.0)
            victim.signal(signal.SIGKILL)
            assert await asyncio.to_thread(victim.wait, 10) == -signal.SIGKILL
            killed_after = time.monotonic() - t_active
            # Nobody waits for ever: the other worker sees the lease lapse and fails it.
            gone = await wait_egress(lkapi, ids[0], {S.EGRESS_FAILED}, 30)
            assert "worker was lost" in gone.error, gone.error
            failed_after = time.monotonic() - t_active - killed_after
            victim.start()  # the same volume: it finds the dead job and reports what it saved
            deadline = time.monotonic() + 60
            while True:
                res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=ids[0]))
                lost = res.items[0]
                if "partial output saved" in lost.error or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=ids[1]))
            recorded = time.monotonic() - t_active_other
            kept = await wait_egress(lkapi, ids[1], {S.EGRESS_COMPLETE}, 60)
    finally:
        w1.stop()
        w2.stop()
    assert failed_after <= 25, failed_after  # lease 15 s, renewed and checked every 3 s
    assert lost.status == S.EGRESS_FAILED
    assert "stopped unexpectedly" in lost.error and "partial output saved" in lost.error, lost.error
    (f,) = lost.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio")
    assert p.duration is not None and p.duration >= 18.0 and p.duration <= killed_after + 0.5, (p.duration,
                                                                                              killed_after)
    assert f.duration / 1e9 >= 18.0
    assert f.size == Path(f.location).stat().st_size > 0
    assert decode_errors(f.location) == ""
    (g,) = kept.file_results
    q = probe(g.location)
    assert q.duration is not None and abs(q.duration - recorded) <= 1.0, (q.duration, recorded)
