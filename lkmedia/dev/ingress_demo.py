"""The ingress main job on a local dev stack: an RTMP push through the real API.

Starts Redis and livekit-server (dev mode, free loopback ports) and ``lkmedia ingress`` as a
child process; asks livekit-server for an RTMP ingress through the public API; pushes
``seconds`` of the synthetic flash/beep A/V (1280x720 30 fps H.264 + AAC in FLV) with the
ffmpeg CLI; shows the participant and its tracks as a hidden subscriber in the room sees
them (and what it decodes); waits for ENDPOINT_INACTIVE and prints the final IngressInfo,
its stream key REDACTED. Everything it started is stopped whatever happens.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
from google.protobuf.json_format import MessageToDict
from livekit import api
from livekit.protocol import ingress as lki
from livekit.protocol import models as lkm

from ..core.errors import LkmediaError
from ..sources.synthetic import SyntheticSource
from .procs import child_pids
from .rooms import ReceivedTrack, SeenParticipant, watch_media
from .stack import DevStack, free_port

IS = lki.IngressState.Status
ROOM = "lkmedia-ingress-demo"
IDENTITY = "rtmp-camera"
WIDTH, HEIGHT, FPS, RATE = 1280, 720, 30, 48_000
PORTS = ("rtmp", "whip", "health", "prometheus", "http_relay")


class DemoError(LkmediaError):
    """The demo could not do what it shows (said in plain words)."""


class PortTaken(DemoError):
    """A port handed out by free_port was taken by another program before the ingress bound it."""


def make_clip(path: Path, seconds: float) -> Path:
    """``seconds`` of SyntheticSource (flash + beep once a second) as H.264 + AAC in FLV."""
    gen = SyntheticSource(width=WIDTH, height=HEIGHT, fps=FPS, sample_rate=RATE, channels=2,
                          audio_frame_samples=1024)
    with av.open(str(path), "w", format="flv") as out:
        v = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "g": str(FPS), "bf": "0"})
        v.width, v.height, v.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        a = out.add_stream("aac", rate=RATE, layout="stereo")
        i = s = 0
        while i < seconds * FPS or s < seconds * RATE:  # interleaved in time order
            if i / FPS <= s / RATE and i < seconds * FPS:
                f = gen.video_frame(i)
                f.pts, f.time_base = i, Fraction(1, FPS)
                out.mux(v.encode(f))
                i += 1
            else:
                af = gen.audio_frame(s)
                af.pts, af.time_base = s, Fraction(1, RATE)
                out.mux(a.encode(af))
                s += 1024
        out.mux(v.encode(None))
        out.mux(a.encode(None))
    return path


class IngressProcess:
    """``python -m lkmedia ingress`` with its config in INGRESS_CONFIG_BODY (the API secret
    stays out of argv), its output in ``log``, in a session of its own: a Ctrl-C at the
    terminal reaches the demo only, which stops it before the stack."""

    def __init__(self, stack: DevStack, ports: dict[str, int], log: Path, extra: str = "") -> None:
        """``extra``: more top-level config keys (YAML lines), e.g. ``rtmp_passthrough: true``."""
        p = ports
        body = (f"api_key: {stack.api_key}\napi_secret: {stack.api_secret}\nws_url: {stack.url}\n"
                f"redis:\n  address: {stack.redis_address}\nrtmp_port: {p['rtmp']}\nwhip_port: {p['whip']}\n"
                f"http_relay_port: {p['http_relay']}\nhealth_port: {p['health']}\n"
                f"prometheus_port: {p['prometheus']}\n"
                # One session on a shared dev machine (the defaults reserve 2 CPUs a session, and
                # /availability asks for the costliest input): not refused while others use the CPU.
                "cpu_cost:\n  rtmp_cpu_cost: 0.05\n  url_cpu_cost: 0.05\n  whip_cpu_cost: 0.05\n"
                "  whip_bypass_transcoding_cpu_cost: 0.05\n  rtmp_passthrough_cpu_cost: 0.05\n"
                "  min_idle_ratio: 0.01\n" + extra)
        self.log = log
        self.health_port = p["health"]
        env = {**os.environ, "INGRESS_CONFIG_BODY": body, "PYTHONPATH": os.pathsep.join(sys.path)}
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "lkmedia", "ingress"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    def check(self) -> None:
        if self.proc.poll() is not None:
            if "address already in use" in self.tail(5):
                raise PortTaken(f"lkmedia ingress could not listen: {self.tail(1)}")
            raise DemoError(f"lkmedia ingress exited with code {self.proc.returncode}; its last lines:\n"
                            f"{self.tail()}")

    def _available(self) -> bool:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/availability", timeout=2) as r:
                return bool(r.status == 200)
        return False

    async def wait_ready(self, timeout: float = 60) -> None:
        """Until it logs "ready" and its health port says it can take a session."""
        deadline = time.monotonic() + timeout
        while not ("ready" in self.tail(200) and await asyncio.to_thread(self._available)):
            self.check()
            if time.monotonic() > deadline:
                raise DemoError(f"lkmedia ingress was not ready in {timeout:g} s; its last lines:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def stop(self, timeout: float = 20) -> None:
        """SIGINT (stop now: it ends its sessions and job processes), SIGKILL at ``timeout``;
        then any job process still there (they die with it anyway: PR_SET_PDEATHSIG)."""
        jobs = child_pids(self.proc.pid)  # its job processes (each in a session of its own)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in jobs:
            with contextlib.suppress(OSError):
                if "lkmedia.worker" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)


async def _wait_state(lkapi: api.LiveKitAPI, ingress_id: str, want: int, timeout: float,
                      check: Callable[[], None] | None = None) -> lki.IngressInfo:
    """The ingress once its state is ``want`` (INACTIVE: with ended_at, i.e. after a session)."""
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        res = await lkapi.ingress.list_ingress(lki.ListIngressRequest(ingress_id=ingress_id))
        st = res.items[0].state if res.items else lki.IngressState()
        if st.status == want and (want != IS.ENDPOINT_INACTIVE or st.ended_at):
            return res.items[0]
        if st.status == IS.ENDPOINT_ERROR:
            raise DemoError(f"ingress {ingress_id} failed: {st.error}")
        if time.monotonic() > deadline:
            raise DemoError(f"ingress {ingress_id} did not reach {IS.Name(want)} in {timeout:g} s "
                            f"(still {IS.Name(st.status)})")
        await asyncio.sleep(0.1)


async def _layers(lkapi: api.LiveKitAPI) -> str:
    """The video track's simulcast layers as livekit-server lists them ("" if not listed)."""
    with contextlib.suppress(api.TwirpError):
        res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=ROOM))
        for p in res.participants:
            for t in p.tracks:
                if p.identity == IDENTITY and t.type == lkm.TrackType.VIDEO and t.layers:
                    return ", ".join(f"{lkm.VideoQuality.Name(q.quality)} {q.width}x{q.height} "
                                     f"{q.bitrate / 1e6:.2f} Mbps" for q in t.layers)
    return ""


def describe(seen: SeenParticipant, received: list[ReceivedTrack], layers: str) -> str:
    lines = [f'participant {seen.identity} ("{seen.name}", {lkm.ParticipantInfo.Kind.Name(seen.kind)}), '
             f"as a subscriber sees it:"]
    for t in seen.tracks:
        r = next((x for x in received if x.kind == t.kind), None)
        what = f"  {t.kind} {t.mime_type}"
        if t.kind == "video":
            what += f" {t.width}x{t.height}" + (" simulcast" if t.simulcast else "")
        if r is None or not r.frames:
            what += ": nothing decoded"
        elif r.kind == "video":
            sizes = ", ".join(f"{w}x{h} x{n}" for (w, h), n in r.sizes.items())
            what += f": decoded {r.frames} frames in {r.seconds:.1f} s ({sizes}), first after {r.first_frame_after:.2f} s"
        else:
            what += (f": decoded {r.frames} frames, {r.samples / (r.sample_rate or 1):.2f} s of audio "
                     f"in {r.seconds:.1f} s, first after {r.first_frame_after:.2f} s")
        lines.append(what)
    lines.append(f"  simulcast layers (ListParticipants): {layers or 'not listed'}")
    return "\n".join(lines)


async def _session(lkapi: api.LiveKitAPI, stack: DevStack, node: IngressProcess, rtmp_port: int, clip: Path,
                   seconds: float) -> lki.IngressInfo:
    info = await lkapi.ingress.create_ingress(lki.CreateIngressRequest(
        input_type=lki.IngressInput.RTMP_INPUT, name="lkmedia-demo", room_name=ROOM,
        participant_identity=IDENTITY, participant_name="RTMP camera"))
    key = info.stream_key
    print(f"ingress {info.ingress_id}: RTMP_INPUT, url {info.url}, stream key REDACTED", flush=True)
    push = await asyncio.create_subprocess_exec(
        "ffmpeg", "-nostdin", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv",
        f"rtmp://127.0.0.1:{rtmp_port}/live/{key}", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)

    def check() -> None:
        node.check()
        if push.returncode not in (None, 0):
            raise DemoError(f"ffmpeg stopped pushing (exit code {push.returncode})")

    try:
        print(f"pushing {seconds:g} s of {WIDTH}x{HEIGHT} {FPS} fps H.264 + AAC (synthetic flash/beep) "
              "with the ffmpeg CLI ...", flush=True)
        t0 = time.monotonic()
        await _wait_state(lkapi, info.ingress_id, IS.ENDPOINT_PUBLISHING, 30, check)
        print(f"ingress {info.ingress_id}: ENDPOINT_PUBLISHING {time.monotonic() - t0:.2f} s after ffmpeg "
              "started", flush=True)
        try:
            seen, received = await watch_media(stack.url, stack.api_key, stack.api_secret, ROOM, IDENTITY, 2,
                                               seconds=min(2.0, seconds / 2), up_to=seconds, timeout=20,
                                               check=check)
        except TimeoutError as e:
            raise DemoError(f"no subscriber saw the ingress participant: {e}") from None
        print(describe(seen, received, await _layers(lkapi)), flush=True)
        _, err = await asyncio.wait_for(push.communicate(), seconds + 60)
        if push.returncode != 0:
            raise DemoError(f"ffmpeg exited with code {push.returncode}: "
                            f"{err.decode(errors='replace').replace(key, 'REDACTED').strip()[-500:]}")
        print(f"push ended; waiting for {IS.Name(IS.ENDPOINT_INACTIVE)} ...", flush=True)
        return await _wait_state(lkapi, info.ingress_id, IS.ENDPOINT_INACTIVE, 30, node.check)
    finally:
        if push.returncode is None:
            push.kill()
            await push.wait()


def redacted_json(info: lki.IngressInfo) -> str:
    """The IngressInfo as JSON, its stream key REDACTED."""
    shown = MessageToDict(info)
    if info.stream_key:
        shown["streamKey"] = "REDACTED"
    # proto3 JSON leaves out zero values, the enums' first ones among them: say them anyway
    shown.setdefault("inputType", lki.IngressInput.Name(info.input_type))
    shown.setdefault("state", {}).setdefault("status", IS.Name(info.state.status))
    text = json.dumps(shown, indent=2)
    return text.replace(info.stream_key, "REDACTED") if info.stream_key else text


async def _start(work: Path) -> tuple[DevStack, IngressProcess, dict[str, int]]:
    """The dev stack and a ready ``lkmedia ingress`` (again on other ports, twice at most, if
    another program took one of them first)."""
    for attempt in range(3):
        ports = {name: free_port() for name in PORTS}
        stack = DevStack(config={"ingress": {"rtmp_base_url": f"rtmp://127.0.0.1:{ports['rtmp']}/live",
                                             "whip_base_url": f"http://127.0.0.1:{ports['whip']}/w"}})
        node: IngressProcess | None = None
        try:
            stack.start()
            node = IngressProcess(stack, ports, work / "ingress.log")
            await node.wait_ready()
            return stack, node, ports
        except BaseException as e:
            if node is not None:
                node.stop()
            stack.cleanup()
            if not isinstance(e, PortTaken) or attempt == 2:
                raise
    raise AssertionError("unreachable")


async def ingress_demo(seconds: float = 10.0) -> lki.IngressInfo:
    if seconds <= 0:
        raise DemoError("--seconds must be positive")
    if shutil.which("ffmpeg") is None:
        raise DemoError("the ffmpeg CLI pushes the RTMP stream and is not installed (apt-get install ffmpeg; "
                        "./scripts/ingress_demo.sh installs it)")
    DevStack.check_installed()
    # Start and stop are synchronous: a cancellation (Ctrl-C, SIGTERM) cannot cut them short.
    with tempfile.TemporaryDirectory(prefix="lkm-ingress-demo-") as work:
        clip = make_clip(Path(work) / "clip.flv", seconds)
        stack, node, ports = await _start(Path(work))
        try:
            print(f"dev stack: livekit-server {stack.url}, redis {stack.redis_address}", flush=True)
            print(f"lkmedia ingress ready: rtmp 127.0.0.1:{ports['rtmp']}, health 127.0.0.1:{ports['health']}",
                  flush=True)
            async with stack.api() as lkapi:
                final: lki.IngressInfo = await _session(lkapi, stack, node, ports["rtmp"], clip, seconds)
        finally:
            node.stop()
            stack.cleanup()
    print(redacted_json(final), flush=True)
    st = final.state
    print(f"ingress {final.ingress_id}: {IS.Name(st.status)}, session {st.resource_id} "
          f"{(st.ended_at - st.started_at) / 1e9:.1f} s", flush=True)
    return final


async def _main(seconds: float) -> lki.IngressInfo:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # tear down as on Ctrl-C
    return await ingress_demo(seconds)


def run(seconds: float) -> int:
    try:
        final = asyncio.run(_main(seconds))
    except asyncio.CancelledError:  # SIGTERM
        raise KeyboardInterrupt from None
    ok = final.state.status == IS.ENDPOINT_INACTIVE and not final.state.error
    return 0 if ok else 1
