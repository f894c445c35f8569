"""RTMP into a room through `lkmedia ingress` (the service, one job process per session),
against the ffmpeg CLI, and its latency.

    python3 bench/run.py --only ingress [--seconds 20]

Real parts: a DevStack (livekit-server, Redis), `python -m lkmedia ingress` as a child
process, an RTMP ingress created through the API, the ffmpeg CLI pushing a 1280x720 30 fps
H.264 (baseline) + AAC flash/beep clip with ``-re -c copy``, and a livekit.rtc subscriber.

- **CPU**: the session's CPU (its job process and the service's own share: the RTMP front
  door and the relay) per media second, from PUBLISHING to the end of the push (the spare
  process the worker starts meanwhile for the next session is reported apart), against
  the ffmpeg CLI decoding the clip and encoding the same three layers + Opus to files
  (bench.room_publish.ffmpeg_layers_peer). Goal (issue 10): ratio <= 1.1.
- **Glass to glass**: the ffmpeg CLI's bytes pass through a loopback TCP relay here that
  stamps, on the wall clock, the first big chunk after the handshake (the key frame at
  media time 0; ``-re`` paces the rest by media time). Every frame the subscriber decodes
  says which source frame it is by the moving bar's position (8 px a frame, period 155
  frames = 5.2 s); its latency is the decode wall time minus (stamp + media time). Goal:
  median <= 1 s (the Go ingress's users report several seconds: ingress #350, #361).
- **First RTMP byte -> PUBLISHING**: the relay's first byte to the state livekit-server stores.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from lkmedia.dev.procs import child_pids, cpu_seconds

GOAL_RATIO = 1.1
GOAL_LATENCY = 1.0
W, H, FPS, STEP = 1280, 720, 30, 8
BAR_W = max(2, W // 32)
PERIOD = W - BAR_W  # the bar's x is (i * STEP) % PERIOD


class StampingRelay:
    """Loopback TCP relay to ``target``: the wall time of its first byte, and of the first
    chunk over 1000 bytes after the RTMP handshake (C0+C1+C2: 3073 bytes)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.first_byte = 0.0
        self.first_media = 0.0
        self.port = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)

        async def up() -> None:
            seen = 0
            while data := await r.read(65536):
                now = time.time()
                self.first_byte = self.first_byte or now
                if seen >= 3073 and len(data) > 1000 and not self.first_media:
                    self.first_media = now
                seen += len(data)
                uw.write(data)
                await uw.drain()
            uw.close()

        async def down() -> None:
            while data := await ur.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        await asyncio.gather(up(), down(), return_exceptions=True)


def bar_frame(y: np.ndarray) -> int | None:
    """The source frame index modulo PERIOD/STEP that a decoded Y plane shows (None for a
    flash, or no bar found)."""
    h, w = y.shape
    band = y[h // 4: 3 * h // 4: 4].astype(np.float32).mean(axis=0)
    if band.mean() > 220:  # the flash frame
        return None
    cols = np.nonzero(band > 218)[0]
    if len(cols) == 0:
        return None
    x = cols.min() * W / w  # the bar's left edge, in source pixels
    return round(x / STEP) % (PERIOD // STEP)


def latency_of(decoded_at: float, index_mod: int, stamp: float) -> float:
    """decode time - (stamp + media time of the latest source frame with this bar position
    sent before it)."""
    n = PERIOD // STEP  # frames in a bar period
    i = index_mod
    elapsed_frames = (decoded_at - stamp) * FPS
    k = max(0, int((elapsed_frames - i) // n))
    while stamp + (i + (k + 1) * n) / FPS <= decoded_at:
        k += 1
    while k > 0 and stamp + (i + k * n) / FPS > decoded_at:
        k -= 1
    return decoded_at - (stamp + (i + k * n) / FPS)


def _threads(pids: list[int]) -> dict[str, float]:
    """CPU seconds by (process role, thread name) so far."""
    out: dict[str, float] = {}
    for i, pid in enumerate(pids):
        role = "service" if i == 0 else f"child{pid}"
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    s = Path(f"/proc/{pid}/task/{t}/stat").read_text()
                    f = s.rsplit(")", 1)[1].split()
                    key = f"{role}:{s[s.index('(') + 1: s.rindex(')')]}"
                    out[key] = out.get(key, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


async def _run_session(stack: Any, service: subprocess.Popen[bytes], rtmp_port: int, clip: Path,
                       media: float) -> dict[str, Any]:
    from livekit import rtc
    from livekit.protocol import ingress as lki

    IS = lki.IngressState.Status
    relay = StampingRelay(rtmp_port)
    await relay.start()
    async with stack.api() as lkapi:
        info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
            input_type=lki.IngressInput.RTMP_INPUT, name="bench", room_name="bench-ingress",
            participant_identity="bench-cam"))
        viewer = rtc.Room()
        frames: list[tuple[float, np.ndarray]] = []
        video: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()

        def subscribed(t: rtc.Track, *_: Any) -> None:
            if t.kind == rtc.TrackKind.KIND_VIDEO and not video.done():
                video.set_result(t)

        viewer.on("track_subscribed", subscribed)
        await viewer.connect(stack.url, stack.token("bench-viewer", "bench-ingress"))
        push = await asyncio.create_subprocess_exec(
            "ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
            f"rtmp://127.0.0.1:{relay.port}/live/{info.stream_key}", stdin=asyncio.subprocess.DEVNULL)
        try:
            while True:
                res = await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=info.ingress_id))
                st = res.items[0].state
                if st.status == IS.ENDPOINT_PUBLISHING:
                    break
                if st.status == IS.ENDPOINT_ERROR or push.returncode is not None:
                    raise RuntimeError(f"the session did not publish: {IS.Name(st.status)} {st.error}")
                await asyncio.sleep(0.02)
            t_publishing = time.time() - relay.first_byte
            pids = [service.pid, *child_pids(service.pid)]
            cpu0 = {p: cpu_seconds(p) for p in pids}
            threads0 = _threads(pids)
            wall0 = time.monotonic()
            stream = rtc.VideoStream(await asyncio.wait_for(video, 15), format=rtc.VideoBufferType.I420)

            async def read() -> None:
                async for ev in stream:
                    f = ev.frame
                    y = np.frombuffer(f.data, np.uint8)[: f.width * f.height].reshape(f.height, f.width)
                    frames.append((time.time(), y[::2, ::2].copy()))

            reader = asyncio.create_task(read())
            await push.wait()
            wall = time.monotonic() - wall0
            threads = {k: round((v - threads0.get(k, 0.0)) / wall, 3)
                       for k, v in _threads([service.pid, *child_pids(service.pid)]).items()}
            per_pid = {p: cpu_seconds(p) - cpu0.get(p, 0.0) for p in [service.pid, *child_pids(service.pid)]}
            service_cpu = per_pid.pop(service.pid, 0.0)
            job = max(per_pid, key=lambda p: per_pid[p])
            # the others: the worker's spare processes, one started for the next session (its
            # imports, once; not this session's running cost, as bench.room_publish counts it)
            spare_cpu = sum(v for p, v in per_pid.items() if p != job)
            cpu = service_cpu + per_pid[job]
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.aclose()
        finally:
            if push.returncode is None:
                push.kill()
                await push.wait()
            await viewer.disconnect()
            await relay.close()
    lat = []
    for t, y in frames:
        i = bar_frame(y)
        if i is not None and t - relay.first_media > 1.0:
            lat.append(latency_of(t, i, relay.first_media))
    return {"cpu_per_s": cpu / wall if wall else None, "cpu": cpu, "service_cpu": service_cpu, "spare_cpu": spare_cpu, "wall": wall,
            "frames": len(frames), "threads": {k: v for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
                                               if v >= 0.005},
            "latency": lat, "publishing_s": t_publishing, "media_s": media}


def bench_ingress(ctx: Any, row: Any) -> list[Any]:
    from bench.livekit_rig import installed
    from bench.room_publish import _clip, ffmpeg_layers_peer
    from lkmedia.dev.ingress_demo import PORTS, IngressProcess
    from lkmedia.dev.stack import DevStack, free_port
    from lkmedia.probe import probe

    why = installed()
    if why:
        return [row("ingress", "", "", status=f"skipped: {why}")]
    work = ctx.work / "ingress"
    work.mkdir(exist_ok=True)
    clip = ctx.cache / f"room_publish_720p30_baseline_{ctx.seconds:g}s.mp4"
    if not clip.exists():
        asyncio.run(_clip(clip, ctx.seconds))
    media = probe(str(clip)).duration or ctx.seconds
    ports = {name: free_port() for name in PORTS}
    with DevStack(workdir=work / "stack",
                  config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{ports['rtmp']}/live"}}) as stack:
        node = IngressProcess(stack, ports, work / "ingress.log")
        try:
            asyncio.run(node.wait_ready(30))
            time.sleep(2.0)  # the worker's spare process up, idle
            r = asyncio.run(_run_session(stack, node.proc, ports["rtmp"], clip, media))
        finally:
            node.stop(30)
    peer = ctx.measure(ffmpeg_layers_peer(clip, work))
    peer_rate = peer.cpu / media if peer.ok else None
    lk = r["cpu_per_s"]
    ratio = lk / peer_rate if lk and peer_rate else None
    lat = sorted(r["latency"])
    med = statistics.median(lat) if lat else None
    p95 = lat[int(0.95 * (len(lat) - 1))] if lat else None
    ctx.details["ingress"] = {k: v for k, v in r.items() if k != "latency"} | {
        "latency_median": med, "latency_p95": p95, "latency_n": len(lat), "peer_cpu_per_s": peer_rate}
    return [
        row("ingress/rtmp-3-layers", "CPU s per media s of an RTMP session through `lkmedia ingress` (its job "
            "process + the service's front door and relay): 720p30 H.264+AAC decoded and published as 3 simulcast "
            "H.264 layers + Opus, against the ffmpeg CLI encoding the same three layers + Opus to files",
            "cpu s / s", lkmedia=round(lk, 3) if lk else None, peer_name="ffmpeg CLI",
            peer=round(peer_rate, 3) if peer_rate else None, ratio=round(ratio, 3) if ratio else None,
            goal=f"ratio <= {GOAL_RATIO}", status="pass" if ratio is not None and ratio <= GOAL_RATIO else "fail",
            note="the peer runs as fast as it can; lkmedia in real time, with WebRTC send and pacing; the spare "
                 f"process the worker starts for the next session took {r['spare_cpu']:.2f} CPU s once (not counted)"),
        row("ingress/glass-to-glass", "seconds from the ffmpeg CLI sending a frame (RTMP, loopback) to a livekit.rtc "
            "subscriber in the room decoding it (median over every decoded frame after the first second)",
            "s", lkmedia=round(med, 3) if med is not None else None, goal=f"<= {GOAL_LATENCY}",
            status="pass" if med is not None and med <= GOAL_LATENCY else "fail",
            note=f"p95 {p95:.3f} s over {len(lat)} frames" if p95 is not None else "no frame matched"),
        row("ingress/first-byte-to-publishing", "seconds from the first RTMP byte to the PUBLISHING state stored in "
            "livekit-server", "s", lkmedia=round(r["publishing_s"], 3), status="info"),
    ]


def _selftest() -> None:
    """bar_frame and latency_of on synthetic frames (no LiveKit)."""
    from lkmedia.sources.synthetic import SyntheticSource

    src = SyntheticSource(width=W, height=H, fps=FPS)
    for i in (3, 77, 154, 200):
        f = src.video_frame(i)
        y = f.to_ndarray(format="yuv420p")[:H][::2, ::2]
        got = bar_frame(y)
        assert got == i % (PERIOD // STEP), (i, got)
    assert abs(latency_of(100.0 + 40 / FPS + 0.25, 40, 100.0) - 0.25) < 1e-6
    print("ok")


if __name__ == "__main__":
    _selftest()
