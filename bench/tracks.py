"""Audio track egresses by the dozen through the egress service (issue 12): CPU and memory
per track, beside the Go egress v1.9.1's figures measured on these machines (0.018-0.021
CPU s per media s, 16.5-19 MB PSS per track, 50 tracks from `lk load-test`).

    python3 bench/run.py --only tracks [--seconds 20]

Real parts: a DevStack, ``python -m lkmedia egress`` in its own process (light jobs share
job processes, ``jobs.light_per_process``), and two kinds of publisher in other processes:
- ``lk load-test --audio-publishers N``: the Go issue's scenario (its audio is nearly
  silent: the publisher sends little or nothing, and lkmedia writes Opus silence);
- FFmpeg's WHIP muxer sending real Opus at 50 packets a second (a beep and silence, every
  packet on the wire), the speech-like case.
The figure is the service's whole process tree (service and job processes) over the
steady window (every egress ACTIVE), less the same tree idle before the calls, per track
per media second; memory is the tree's PSS at the end of the window less idle, per track.
The peer is the ffmpeg CLI receiving one such Opus stream live (SRTP over loopback UDP, from
a second ffmpeg sending in real time) and remuxing it into OGG (``peers.live_remux``).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

AUDIO_TRACKS = 100  # lk load-test: the goal (>= 100 on this machine)
SPEECH_TRACKS = 12  # WHIP clients: one Python process each, so fewer
GOAL_CPU = 0.016  # CPU s per media s per track (0.9 x the Go egress)
GOAL_MB = 15.0
GOAL_RATIO = 2.0
CONFIG = "cpu_cost:\n  track_cpu_cost: 0.01\n"  # (the default, 0.5, admits 3 track egresses on 2 cores)


async def _scenario(stack: Any, work: Path, room: str, n: int, speech: bool, seconds: float) -> dict[str, Any]:
    from livekit import api
    from livekit.protocol import egress as lk

    from bench.sampling import TreeSampler
    from lkmedia.dev.lk import LkLoadTest
    from lkmedia.testing.egress import TERMINAL, EgressServiceProcess, S, service_config_body, wait_egress
    from lkmedia.testing.rooms import published_tracks
    from lkmedia.testing.whip import whip_client, whips_one_at_a_time

    body = service_config_body(stack, CONFIG)
    async with contextlib.AsyncExitStack() as es:
        async def whip(who: str) -> Any:
            return await es.enter_async_context(whip_client(
                f"{stack.http_url}/whip/v1", stack.token(who, room), int(seconds) + 240,
                env={"LKM_WHIP_AUDIO_ONLY": "1"}))

        if not speech:
            es.enter_context(LkLoadTest(stack, room, video_publishers=0, audio_publishers=n))
        svc = es.enter_context(EgressServiceProcess(body, work / f"svc-{room}", name=room))
        lkapi = await es.enter_async_context(stack.api())
        if speech:  # (one at a time: livekit-server can deadlock a room of WHIP publishers)
            await whips_one_at_a_time(lkapi, room, (f"whip{k}" for k in range(n)), whip)
        sids = list(await published_tracks(lkapi, room, n, timeout=90))
        await asyncio.sleep(3)  # the service's spare processes up, idle
        idle = TreeSampler(svc.proc.pid)  # type: ignore[union-attr]
        await asyncio.sleep(5)
        idle_cpu = idle.stop() / 5
        idle_pss = idle.peak_rss
        t0 = time.monotonic()
        infos = await asyncio.gather(*(lkapi.egress.start_track_egress(lk.TrackEgressRequest(
            room_name=room, track_id=sid, file=lk.DirectFileOutput(filepath=f"{room}-{sid}.ogg"))) for sid in sids))
        ids = [i.egress_id for i in infos]
        for eid in ids:
            await wait_egress(lkapi, eid, {S.EGRESS_ACTIVE}, 180)
        active_after = time.monotonic() - t0
        await asyncio.sleep(2)
        busy = TreeSampler(svc.proc.pid)  # type: ignore[union-attr]
        w0 = time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - w0
        cpu = busy.stop()
        pss = busy.peak_rss
        async def stop(eid: str) -> None:
            with contextlib.suppress(api.TwirpError):  # (the API client's retry of a stop that got through)
                await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=eid))

        await asyncio.gather(*(stop(eid) for eid in ids))
        done = [await wait_egress(lkapi, eid, set(TERMINAL), 120) for eid in ids]
    complete = sum(1 for d in done if d.status == S.EGRESS_COMPLETE)
    return {"tracks": n, "complete": complete, "active_after_s": round(active_after, 1),
            "cpu_per_track": (cpu / wall - idle_cpu) / n, "service_cpu": cpu / wall, "idle_cpu": idle_cpu,
            "mb_per_track": (pss - idle_pss) / n / 2**20, "pss_mb": pss / 2**20, "idle_pss_mb": idle_pss / 2**20}


def bench_tracks(ctx: Any, row: Any) -> list[Any]:
    from bench.egress import make_vp8_input
    from bench.livekit_rig import installed
    from lkmedia.dev.stack import DevStack

    why = installed()
    if why:
        return [row("tracks", "", "", status=f"skipped: {why}")]
    work = ctx.work / "tracks"
    work.mkdir(exist_ok=True)
    seconds = max(ctx.seconds, 20)
    with DevStack(workdir=work / "stack") as stack:
        silent = asyncio.run(_scenario(stack, work, "bench-tracks-silent", AUDIO_TRACKS, False, seconds))
        speech = asyncio.run(_scenario(stack, work, "bench-tracks-speech", SPEECH_TRACKS, True, seconds))
    from bench.peers import live_remux

    # (over 60 s at least: one stream costs ~0.002 CPU s / s, and /proc counts 10 ms ticks)
    peer_rate = live_remux(make_vp8_input(ctx.cache, ctx.seconds), "opus", work / "ffmpeg_track.ogg",
                           max(seconds, 60))
    ctx.details["tracks"] = {"silent": silent, "speech": speech, "peer_cpu_per_s": peer_rate}
    rows = []
    for name, r, what in (("silent", silent, f"{AUDIO_TRACKS} `lk load-test` audio publishers (nearly silent)"),
                          ("speech", speech, f"{SPEECH_TRACKS} WHIP publishers sending Opus at 50 packets/s")):
        c, mb = r["cpu_per_track"], r["mb_per_track"]
        ratio = c / peer_rate if peer_rate else None
        rows.append(row(f"tracks/audio-{name}-cpu", f"CPU s per media s per audio track egress, {r['tracks']} at once "
                        f"(the service's process tree, less idle): {what}", "cpu s / s", lkmedia=round(c, 4),
                        peer_name="ffmpeg CLI (live SRTP in, remux)", peer=round(peer_rate, 4) if peer_rate else None,
                        ratio=round(ratio, 2) if ratio else None, goal=f"<= {GOAL_RATIO}",
                        status="pass" if ratio is not None and ratio <= GOAL_RATIO and c <= GOAL_CPU else "fail",
                        note=f"goal also <= {GOAL_CPU} (Go egress 0.018-0.021); {r['complete']} of {r['tracks']} "
                             f"COMPLETE; all ACTIVE {r['active_after_s']} s after the calls; "
                             f"{0.8 * 2 / c:.0f} would fit in 80 % of 2 cores" if c > 0 else ""))
        rows.append(row(f"tracks/audio-{name}-memory", f"MB (PSS) per audio track egress, {r['tracks']} at once: "
                        f"{what}", "MB", lkmedia=round(mb, 1), goal=f"<= {GOAL_MB}",
                        status="pass" if mb <= GOAL_MB else "fail",
                        note=f"Go egress 16.5-19; tree {r['pss_mb']:.0f} MB, idle {r['idle_pss_mb']:.0f} MB"))
    return rows
