"""What the LiveKit benches share: the publishers' clip, ``lk`` publishers up, the egress
service as a child process, and one egress recorded from the API call to COMPLETE with
the CPU and memory of the service's whole process tree (bench/sampling.py)."""
from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.egress import first_mp4, has_media
from bench.egress_procs import Child, _env, _wait_http
from bench.sampling import TreeSampler


def installed() -> str:
    """Why the LiveKit benches cannot run here ("" if they can)."""
    from lkmedia.dev.stack import DevStack, StackError

    try:
        DevStack.check_installed()
    except StackError as e:
        return str(e)
    return ""


def make_clip(cache: Path, seconds: float) -> Path:
    from lkmedia.dev.lk import h264_clip

    out = cache / f"room_composite_testsrc_720p30_{seconds + 15:g}s.h264"
    if not out.exists():
        h264_clip(out, seconds + 15, width=1280, height=720, bitrate="2M")
    return out


async def publishers_up(stack: Any, room: str, n: int) -> None:
    from lkmedia.testing.rooms import VIDEO, published_tracks

    async with stack.api() as lkapi:
        await published_tracks(lkapi, room, n, VIDEO)


@contextlib.contextmanager
def egress_service(stack: Any, work: Path, extra: str = "") -> Iterator[tuple[Child, Path]]:
    """``python3 -m lkmedia egress`` on ``stack`` (config by EGRESS_CONFIG_BODY, plus
    ``extra``), up and with its spare job process imported; its jobs' directory."""
    from lkmedia.dev.stack import free_port

    health = free_port()
    body = (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\nws_url: {stack.url}\n"
            f"redis:\n  address: {stack.redis_address}\nhealth_port: {health}\n{extra}")
    tmp_root = work / "tmp"
    tmp_root.mkdir(exist_ok=True)
    svc = Child([sys.executable, "-m", "lkmedia", "egress"], work / "egress.log",
                _env(EGRESS_CONFIG_BODY=body, TMPDIR=str(tmp_root)))
    try:
        _wait_http(f"http://127.0.0.1:{health}/", svc, 60)
        time.sleep(3)  # the spare job process has done its imports
        yield svc, tmp_root / "lkmedia-egress"
    finally:
        svc.stop()


async def record(stack: Any, svc: Child, tmp: Path, start: Any, seconds: float, idle: float) -> dict[str, Any]:
    from livekit.protocol import egress as lk

    S = lk.EgressStatus
    async with stack.api() as lkapi:
        sampler, t0 = TreeSampler(svc.pid), time.monotonic()
        info = await start(lkapi)
        active = media = None
        while active is None or media is None:
            now = time.monotonic() - t0
            res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=info.egress_id))
            if res.items and res.items[0].status in (S.EGRESS_FAILED, S.EGRESS_ABORTED):
                raise RuntimeError(f"egress ended {S.Name(res.items[0].status)}: {res.items[0].error}")
            if active is None and res.items and res.items[0].status == S.EGRESS_ACTIVE:
                active = now
            mp4 = first_mp4(tmp / info.egress_id)
            if media is None and mp4 is not None and has_media(mp4):
                media = now
            if now > 60:
                raise RuntimeError(f"not recording after 60 s: {svc.tail()}")
            await asyncio.sleep(0.02)
        await asyncio.sleep(seconds)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
        while True:
            res = await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=info.egress_id))
            if res.items and res.items[0].status in (S.EGRESS_COMPLETE, S.EGRESS_FAILED):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the job process exits; its Chrome is gone
        wall, cpu = time.monotonic() - t0, sampler.stop()
        peak = sampler.peak_rss
    done = res.items[0]
    if done.status != S.EGRESS_COMPLETE:
        raise RuntimeError(f"egress ended {S.Name(done.status)}: {done.error}")
    f = done.file_results[0]
    duration = f.duration / 1e9
    from lkmedia.probe import probe

    p = probe(f.location)
    v = next((s for s in p.streams if s.kind == "video"), None)
    return {"egress_id": info.egress_id, "location": f.location, "to_active_s": round(active, 3),
            "to_first_media_s": round(media, 3), "wall_s": round(wall, 3), "cpu": round(cpu, 3),
            "peak_rss_mb": round(peak / 2**20), "file_duration_s": round(duration, 3), "fps": round((v.frames or 0) / p.duration, 2) if v and p.duration else None,
            "cpu_per_media_s": round((cpu - idle * wall) / duration, 4)}


