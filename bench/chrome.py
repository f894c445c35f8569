"""Chrome engine benchmark: lkmedia's template page recording a 2-publisher room, and a
web egress of a 720p30 page, with Chromium, Xvfb and PulseAudio counted.

    python3 bench/run.py --only chrome [--seconds 20]

Real parts: a DevStack, ``python3 -m lkmedia egress`` in a child process, two
``lk room join --publish clip.h264`` publishers (testsrc 1280x720 30 fps H.264, as in
bench/room_composite.py) for the template run, a local HTTP server with the flash/beep
page (lkmedia.dev.webpage: a 1280x720 VP8/Opus clip in a ``<video>``) for the web run.
CPU: the service's whole process tree sampled every 0.1 s, each process's own user + sys
time as last seen (Chromium's processes outlive their parent when it is killed, and
nobody in the tree reaps them: a final reading would miss them), minus the idle rate.

Goals (issue 9): the 2-publisher grid through the template page <= 0.85 CPU s per media
second (the Go egress's own figure here, also Chrome); API call -> ACTIVE <= 4 s. The web
egress: CPU per media second and the frame rate delivered (information).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from bench.livekit_rig import egress_service, installed, make_clip, publishers_up, record
from bench.sampling import TreeSampler

GOAL_TEMPLATE = 0.85
GOAL_ACTIVE = 4.0


def _halves(path: str, t: float) -> list[float]:
    """Mean luma of the left and right halves of the frame at ``t`` (two grid tiles: both lit)."""
    import av

    with av.open(path) as c:
        for f in c.decode(video=0):
            if f.time is not None and f.time >= t:
                y = f.to_ndarray(format="gray")
                w = y.shape[1] // 2
                return [round(float(y[:, :w].mean()), 1), round(float(y[:, w:].mean()), 1)]
    return []


def bench_chrome(ctx: Any, row: Any) -> list[Any]:
    from livekit.protocol import egress as lk

    from lkmedia.dev.lk import LkJoin
    from lkmedia.dev.stack import DevStack, free_port
    from lkmedia.dev.webpage import PageServer, flash_beep_clip, write_video_page

    why = installed()
    if why:
        return [row("chrome", "", "", status=f"skipped: {why}")]
    seconds = ctx.seconds
    clip = make_clip(ctx.cache, seconds)
    work = ctx.work / "chrome"
    work.mkdir(exist_ok=True)
    pages = work / "pages"
    pages.mkdir(exist_ok=True)
    asyncio.run(flash_beep_clip(pages / "clip.webm", seconds + 20, width=1280, height=720))
    write_video_page(pages, "clip.webm")
    d: dict[str, Any] = ctx.details.setdefault("chrome", {})
    tport = free_port()
    extra = f"template_port: {tport}\ncpu_cost:\n  web_cpu_cost: 1\n  room_composite_cpu_cost: 1\n"
    with DevStack(workdir=work / "stack") as stack, egress_service(stack, work, extra) as (svc, tmp):
        s = TreeSampler(svc.pid)
        time.sleep(5)
        idle = s.stop() / 5.0

        def template(lkapi: Any) -> Any:
            return lkapi.egress.start_room_composite_egress(lk.RoomCompositeEgressRequest(
                room_name="bench-template", layout="grid", custom_base_url=f"http://localhost:{tport}/",
                preset=lk.H264_720P_30, file_outputs=[lk.EncodedFileOutput(filepath="tpl.mp4")]))

        with contextlib.ExitStack() as joins:
            for i in range(2):
                joins.enter_context(LkJoin(stack, "bench-template", f"lk{i}", [clip],
                                           log_path=work / f"lk-{i}.log"))
            asyncio.run(publishers_up(stack, "bench-template", 2))
            d["template"] = asyncio.run(record(stack, svc, tmp, template, seconds, idle))
            d["template"]["tiles_luma"] = _halves(d["template"]["location"], seconds / 2)

        async def web_run() -> dict[str, Any]:
            async with PageServer(pages) as srv:
                def web(lkapi: Any) -> Any:
                    return lkapi.egress.start_web_egress(lk.WebEgressRequest(
                        url=srv.url(), await_start_signal=True, preset=lk.H264_720P_30,
                        file_outputs=[lk.EncodedFileOutput(filepath="web.mp4")]))
                return await record(stack, svc, tmp, web, seconds, idle)

        d["web"] = asyncio.run(web_run())
    d["idle_cpu_per_s"] = round(idle, 4)
    t, w = d["template"], d["web"]
    return [
        row("chrome/template-grid-2", "CPU s per media s, 2-publisher 720p30 grid through lkmedia's template page "
            "in Chrome (H264_720P_30 MP4; service + job + Chromium + Xvfb + PulseAudio, minus idle)", "cpu s / s",
            lkmedia=round(t["cpu_per_media_s"], 3), peer_name="Go egress (measured here)", peer=0.85,
            ratio=round(t["cpu_per_media_s"] / 0.85, 3), goal=f"<= {GOAL_TEMPLATE}",
            status="pass" if t["cpu_per_media_s"] <= GOAL_TEMPLATE else "fail",
            note=f"file {t['file_duration_s']:.2f} s at {t['fps']} fps; tiles' mean luma {t['tiles_luma']}; "
                 f"peak PSS {t['peak_rss_mb']} MB (service + job + Chrome); idle {idle:.3f} cpu s/s"),
        row("chrome/web-720p30", "CPU s per media s, web egress of a 720p30 page playing a VP8/Opus video "
            "(H264_720P_30 MP4, Chromium + Xvfb + PulseAudio counted)", "cpu s / s",
            lkmedia=round(w["cpu_per_media_s"], 3), status="info",
            note=f"file {w['file_duration_s']:.2f} s at {w['fps']} fps delivered; peak PSS {w['peak_rss_mb']} MB"),
        row("chrome/start-active", "API call -> ACTIVE, Chrome engine (template page; web page)", "s",
            lkmedia=round(max(t["to_active_s"], w["to_active_s"]), 3), goal=f"<= {GOAL_ACTIVE:g}",
            status="pass" if max(t["to_active_s"], w["to_active_s"]) <= GOAL_ACTIVE else "fail",
            note=f"template {t['to_active_s']:.3f} s (first media {t['to_first_media_s']:.3f} s); web "
                 f"{w['to_active_s']:.3f} s (first media {w['to_first_media_s']:.3f} s)"),
    ]
