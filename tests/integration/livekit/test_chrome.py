"""The Chrome engine against the real livekit-server: Debian's Chromium on an Xvfb display
of the job's own, its sound from a PulseAudio sink of the job's own. A web egress of a
page playing a flash/beep clip (A/V offset, frame rate, both streams); lkmedia's template
page recording a real room; the start protocol's failure; a page that navigates away or
whose renderer dies; nothing left running after the jobs."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack, free_port
from lkmedia.dev.webpage import PageServer, flash_beep_clip, write_video_page
from lkmedia.probe import av_offsets, decode_errors, probe
from lkmedia.service.egress import EgressService
from lkmedia.testing.egress import TERMINAL, S, egress_service, wait_egress

from .tiles import COLOURS, H, W, colour_at

CAPTURE = ("Xvfb", "chromium", "pulseaudio", "parec")


def leftovers() -> list[str]:
    """Capture processes still running (zombies, already dead and waiting for init to reap
    them, do not count)."""
    out = subprocess.run(["ps", "-eo", "pid,stat,comm,args"], capture_output=True, text=True).stdout.splitlines()[1:]
    rows = [line.split(None, 3) for line in out]
    return [" ".join([r[0], r[2], r[3] if len(r) > 3 else ""]) for r in rows
            if not r[1].startswith("Z") and any(r[2].startswith(c) for c in CAPTURE)]


@pytest.fixture
async def service(livekit_stack: DevStack, tmp_path: Path) -> AsyncIterator[EgressService]:
    extra = (f"template_port: {free_port()}\ncpu_cost:\n  web_cpu_cost: 0.5\n  audio_web_cpu_cost: 0.5\n"
             "  room_composite_cpu_cost: 0.5\njobs:\n  start_signal_timeout: 4s\n")
    async with egress_service(livekit_stack, tmp_path, extra) as svc:
        yield svc


@pytest.fixture
async def pages(tmp_path: Path) -> AsyncIterator[PageServer]:
    d = tmp_path / "pages"
    d.mkdir()
    # Two-frame flashes: a 30 fps grab of a 30 fps video now and then shows a frame twice
    # and skips the next, and one-frame flashes were missed (6 of 10 once, in CI). The flash
    # seen may be the second frame: an offset reads up to 33 ms earlier than it is.
    await flash_beep_clip(d / "clip.webm", 30, flash_frames=2)
    write_video_page(d, "clip.webm")
    (d / "silent.html").write_text("<html><body style='background:#08f'>no start signal here</body></html>")
    (d / "away.html").write_text("<html><body style='background:#0a0'><script>console.log('START_RECORDING');"
                                 "setTimeout(() => { location.href = 'other.html'; }, 2500);</script></body></html>")
    (d / "other.html").write_text("<html><body>somewhere else</body></html>")
    async with PageServer(d) as srv:
        yield srv


async def _web(lkapi: api.LiveKitAPI, url: str, **kw: Any) -> lk.EgressInfo:
    return await lkapi.egress.start_web_egress(lk.WebEgressRequest(
        url=url, preset=lk.H264_720P_30, file_outputs=[lk.EncodedFileOutput(filepath="web.mp4")], **kw))


async def test_web_egress_of_a_playing_video_has_both_streams_in_sync_at_30_fps(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    async with livekit_stack.api() as lkapi:
        t_call = time.monotonic()
        info = await _web(lkapi, pages.url(), await_start_signal=True)
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
        t_active = time.monotonic()
        await asyncio.sleep(10)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        t_stop = time.monotonic()
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    (f,) = done.file_results
    p = probe(f.location)
    kinds = sorted((s.kind, s.codec) for s in p.streams)
    assert kinds == [("audio", "aac"), ("video", "h264")] and decode_errors(f.location) == ""
    # The file starts when the capture does; ACTIVE is seen here after the job's report has
    # gone through livekit-server (up to half a second in the session's first test).
    assert p.duration == pytest.approx(t_stop - t_active, abs=1.0)
    v = next(s for s in p.streams if s.kind == "video")
    fps = v.frames / p.duration
    offsets = av_offsets(f.location)
    print(f"web egress: call->ACTIVE {t_active - t_call:.2f} s, {fps:.2f} fps, A/V offsets (ms) "
          f"{[round(o * 1000) for o in offsets]}")
    assert (v.width, v.height) == (W, H) and fps >= 29.0
    assert len(offsets) >= 8 and max(abs(o) for o in offsets) <= 0.060, offsets
    with av.open(f.location) as c:  # the bar moves: two frames half a second apart differ
        imgs = [fr.to_ndarray(format="gray") for i, fr in enumerate(c.decode(video=0)) if i in (45, 60)]
    assert np.abs(imgs[0].astype(int) - imgs[1].astype(int)).mean() > 1.0


async def test_a_page_that_never_signals_start_fails_start_signal_not_received(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    async with livekit_stack.api() as lkapi:
        info = await _web(lkapi, pages.url("silent.html"), await_start_signal=True)
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 40)
    assert done.status == S.EGRESS_FAILED and done.error == "Start signal not received"
    assert leftovers() == []


async def test_a_page_that_navigates_away_ends_failed_with_its_recording_kept(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    async with livekit_stack.api() as lkapi:
        info = await _web(lkapi, pages.url("away.html"), await_start_signal=True)
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 40)
    assert done.status == S.EGRESS_FAILED
    assert done.error == f"Chrome: the page navigated away (to {pages.url('other.html')})"
    (f,) = done.file_results
    assert probe(f.location).duration > 1.5 and decode_errors(f.location) == ""
    assert leftovers() == []


async def test_a_renderer_that_dies_ends_failed_with_its_recording_kept(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    async with livekit_stack.api() as lkapi:
        info = await _web(lkapi, pages.url(), await_start_signal=True)
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
        await asyncio.sleep(2)
        renderers = [int(line.split()[0]) for line in leftovers() if "--type=renderer" in line]
        assert renderers
        for pid in renderers:
            os.kill(pid, signal.SIGKILL)
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
    assert done.status == S.EGRESS_FAILED and done.error == "Chrome: the page crashed"
    (f,) = done.file_results
    assert probe(f.location).duration > 1.5 and decode_errors(f.location) == ""
    assert leftovers() == []


async def test_a_page_that_cannot_load_fails_naming_it(livekit_stack: DevStack, service: EgressService) -> None:
    port = free_port()
    async with livekit_stack.api() as lkapi:
        info = await _web(lkapi, f"http://127.0.0.1:{port}/page?secret=1")
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 60)
    assert done.status == S.EGRESS_FAILED
    assert done.error == f"page load failed: http://127.0.0.1:{port}/page: ERR_CONNECTION_REFUSED"


async def test_three_chrome_egresses_in_a_row_leave_no_chrome_display_or_sink(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    assert leftovers() == []
    async with livekit_stack.api() as lkapi:
        for _ in range(3):
            info = await _web(lkapi, pages.url(), await_start_signal=True)
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
            assert any(line.split()[1] == "Xvfb" for line in leftovers())
            await asyncio.sleep(1)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
            assert done.status == S.EGRESS_COMPLETE, done.error
            assert leftovers() == []
    assert not os.listdir(Path(service.tmp_dir) / ".chrome")




async def test_the_template_page_records_a_room_with_both_publishers_and_follows_update_layout(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    base = f"http://localhost:{service.conf.template_port}/"
    pubs = [PublisherProcess(livekit_stack.url, livekit_stack.token(f"p{i}", room_name), color=c)
            for i, c in enumerate(COLOURS[:2])]
    try:
        for p in pubs:
            await p.start()
        async with livekit_stack.api() as lkapi:
            info = await lkapi.egress.start_room_composite_egress(lk.RoomCompositeEgressRequest(
                room_name=room_name, layout="grid", custom_base_url=base, preset=lk.H264_720P_30,
                file_outputs=[lk.EncodedFileOutput(filepath="tpl.mp4")]))
            await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 40)
            t_active = time.monotonic()
            await asyncio.sleep(5)
            await lkapi.egress.update_layout(lk.UpdateLayoutRequest(egress_id=info.egress_id, layout="speaker"))
            t_update = time.monotonic() - t_active
            await asyncio.sleep(4)
            await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
            done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
    finally:
        await asyncio.gather(*(p.stop() for p in pubs))
    assert done.status == S.EGRESS_COMPLETE, done.error
    (f,) = done.file_results
    assert decode_errors(f.location) == ""
    with av.open(f.location) as c:
        fs = [(float(fr.time), fr.to_ndarray(format="yuv420p")) for fr in c.decode(video=0)]
    grid = min(fs, key=lambda x: abs(x[0] - (t_update - 1.0)))[1]
    seen = [colour_at(grid, W // 4, H // 2), colour_at(grid, 3 * W // 4, H // 2)]
    assert sorted(x for x in seen if x is not None) == [0, 1], seen
    # speaker: the focus on the right five sixths, the other in the carousel's first tile
    speaker = [t for t, img in fs if colour_at(img, W // 12, 60) is not None and colour_at(img, 7 * W // 12, H // 2) is not None
               and colour_at(img, W // 12, 60) != colour_at(img, 7 * W // 12, H // 2)]
    assert speaker and speaker[0] - t_update <= 1.0 and fs[-1][0] - speaker[0] > 2.0, (t_update, speaker[:3])


async def _lk(stack: DevStack, tmp_path: Path, *args: str) -> str:
    from lkmedia.dev.stack import find_binary

    env = {"LIVEKIT_URL": stack.http_url, "LIVEKIT_API_KEY": stack.api_key, "LIVEKIT_API_SECRET": stack.api_secret,
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(find_binary("lk"), *args, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


async def test_lk_cli_and_v2_start_egress_start_web_egresses(
        livekit_stack: DevStack, service: EgressService, pages: PageServer, tmp_path: Path) -> None:
    """`lk egress start --type web` (livekit-cli v2.18.2) and the v2 StartEgress with a web
    source, as livekit-server v1.13.5 routes them."""
    import json

    req = tmp_path / "web.json"
    req.write_text(json.dumps({"url": pages.url(), "await_start_signal": True, "preset": "H264_720P_30",
                               "file_outputs": [{"filepath": "cli-web.mp4"}]}))
    text = await _lk(livekit_stack, tmp_path, "egress", "start", "--type", "web", str(req))
    ids = [next(w for w in text.replace('"', " ").split() if w.startswith("EG_"))]
    async with livekit_stack.api() as lkapi:
        v2 = await lkapi.egress.start_egress(lk.StartEgressRequest(
            web=lk.WebSource(url=pages.url(), await_start_signal=True), preset=lk.H264_720P_30,
            outputs=[lk.Output(file=lk.FileOutput(filepath="v2-web.mp4"))]))
        ids.append(v2.egress_id)
        for egress_id in ids:
            await wait_egress(lkapi, egress_id, {S.EGRESS_ACTIVE}, 40)
        await asyncio.sleep(3)
        await _lk(livekit_stack, tmp_path, "egress", "stop", "--id", ids[0])
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=ids[1]))
        done = [await wait_egress(lkapi, e, TERMINAL, 30) for e in ids]
    for d in done:
        assert d.status == S.EGRESS_COMPLETE, d.error
        loc = d.file_results[0].location if d.file_results else d.file.location
        p = probe(loc)
        assert p.has("video") and p.has("audio") and p.duration > 2.0


async def test_a_killed_chrome_job_leaves_no_chrome_display_or_sink(
        livekit_stack: DevStack, service: EgressService, pages: PageServer) -> None:
    async with livekit_stack.api() as lkapi:
        info = await _web(lkapi, pages.url(), await_start_signal=True)
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
        xvfb = next(int(line.split()[0]) for line in leftovers() if line.split()[1] == "Xvfb")
        with open(f"/proc/{xvfb}/stat") as f:
            job_pid = int(f.read().rsplit(")", 1)[1].split()[1])  # Xvfb's parent: the job process
        os.kill(job_pid, signal.SIGKILL)
        done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
        assert done.status == S.EGRESS_FAILED
        deadline = time.monotonic() + 5
        while leftovers() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    assert leftovers() == []
