"""Publishers for tests and the demo: a Python participant sending the synthetic
flash/beep A/V, and ``lk load-test`` as an independent client nobody here wrote.

The Python publisher keeps one media timeline from its start: frame i is sent at
t0 + i/fps and audio sample s with its Opus packet's first sample (see _audio_loop),
at t0 + s/rate, so flashes and beeps leave together and an
output's A/V offset (lkmedia.probe.av_offsets) measures the egress, not us. A drop
(``drop_for``) pauses sending while the timeline runs on, as a real camera would.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from livekit import rtc

from ..sinks.room_capture import to_rtc_audio, to_rtc_video
from ..sources.synthetic import SyntheticSource

log = logging.getLogger("lkmedia.dev.publisher")

AUDIO_CHUNK_MS = 10


class SyntheticPublisher:
    """Joins a room and publishes SyntheticSource's flash/beep A/V in real time.

    ``drop_for(s, mode="rejoin")`` disconnects and rejoins with the same identity after
    ``s`` seconds; ``mode="republish"`` unpublishes the tracks and publishes new ones.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        video: bool = True,
        audio: bool = True,
        width: int = 640,
        height: int = 360,
        fps: float = 30,
        sample_rate: int = 48_000,
        channels: int = 1,
        video_codec: str = "vp8",
        video_bitrate: int = 1_500_000,
        color: tuple[int, int, int] | None = None,
        audio_mode: str = "beep",
        video_source: str = "camera",
        scalability_mode: str | None = None,
    ) -> None:
        if not (video or audio):
            raise ValueError("SyntheticPublisher needs video, audio or both")
        codecs = {"vp8": rtc.VideoCodec.VP8, "vp9": rtc.VideoCodec.VP9, "h264": rtc.VideoCodec.H264,
                  "av1": rtc.VideoCodec.AV1}
        if video_codec not in codecs:
            raise ValueError(f"unknown video codec {video_codec!r}; use one of {sorted(codecs)}")
        self.url = url
        self._token = token
        self.video, self.audio = video, audio
        self.fps = fps
        self.sample_rate = sample_rate
        self.channels = channels
        self.video_codec = codecs[video_codec]
        self.video_bitrate = video_bitrate
        self.scalability_mode = scalability_mode  # e.g. "L3T3_KEY", as browsers send VP9
        if video_source not in ("camera", "screen_share"):
            raise ValueError(f"video_source must be 'camera' or 'screen_share', not {video_source!r}")
        self.video_source = (rtc.TrackSource.SOURCE_CAMERA if video_source == "camera"
                             else rtc.TrackSource.SOURCE_SCREENSHARE)
        self.gen = SyntheticSource(width=width, height=height, fps=fps, sample_rate=sample_rate,
                                   channels=channels, video=video, audio=audio,
                                   audio_frame_samples=sample_rate * AUDIO_CHUNK_MS // 1000,
                                   color=tuple(color) if color is not None else None,  # type: ignore[arg-type]
                                   audio_mode=audio_mode)
        self.room: rtc.Room | None = None
        self._vsrc: rtc.VideoSource | None = None
        self._asrc: rtc.AudioSource | None = None
        self.video_pub: rtc.LocalTrackPublication | None = None
        self.audio_pub: rtc.LocalTrackPublication | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sending = False
        self._t0 = 0.0
        self.frames_sent = 0
        self.samples_sent = 0
        self.drops = 0
        self.last_absence = 0.0  # seconds the last drop_for sent nothing (leave to media again)

    # -- properties --------------------------------------------------------
    @property
    def identity(self) -> str:
        assert self.room is not None, "publisher not started"
        return self.room.local_participant.identity

    @property
    def video_sid(self) -> str | None:
        return self.video_pub.sid if self.video_pub is not None else None

    @property
    def audio_sid(self) -> str | None:
        return self.audio_pub.sid if self.audio_pub is not None else None

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> SyntheticPublisher:
        """Join, publish, and start sending on the media timeline (t = 0 now)."""
        if self.video:
            self._vsrc = rtc.VideoSource(self.gen.width, self.gen.height)
        if self.audio:
            self._asrc = rtc.AudioSource(self.sample_rate, self.channels, queue_size_ms=0)
        await self._join()
        await self._publish()
        self._t0 = time.monotonic()
        self._sending = True
        if self.video:
            self._tasks.append(asyncio.create_task(self._video_loop(), name="publisher-video"))
        if self.audio:
            self._tasks.append(asyncio.create_task(self._audio_loop(), name="publisher-audio"))
        return self

    async def stop(self) -> None:
        """Stop sending, leave the room, free the sources."""
        self._sending = False
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.room is not None:
            with contextlib.suppress(Exception):
                await self.room.disconnect()
            self.room = None
        for src in (self._vsrc, self._asrc):
            if src is not None:
                with contextlib.suppress(Exception):
                    await src.aclose()
        self._vsrc = self._asrc = None

    async def __aenter__(self) -> SyntheticPublisher:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _join(self) -> None:
        self.room = rtc.Room()
        await self.room.connect(self.url, self._token, rtc.RoomOptions(auto_subscribe=False))

    async def _publish(self, only: str | None = None) -> None:
        assert self.room is not None
        lp = self.room.local_participant

        async def video() -> None:
            assert self._vsrc is not None
            track = rtc.LocalVideoTrack.create_video_track("synthetic-video", self._vsrc)
            opts = rtc.TrackPublishOptions(source=self.video_source, video_codec=self.video_codec,
                                           simulcast=False)
            opts.video_encoding.max_bitrate = self.video_bitrate
            if self.scalability_mode:
                opts.scalability_mode = self.scalability_mode
            opts.video_encoding.max_framerate = float(self.fps)
            self.video_pub = await lp.publish_track(track, opts)

        async def audio() -> None:
            assert self._asrc is not None
            track = rtc.LocalAudioTrack.create_audio_track("synthetic-audio", self._asrc)
            opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False)
            self.audio_pub = await lp.publish_track(track, opts)

        # Both at once, as a browser publishes its camera and microphone.
        await asyncio.gather(*([video()] if self._vsrc is not None and only in (None, "video") else []),
                             *([audio()] if self._asrc is not None and only in (None, "audio") else []))

    # -- drops and mutes ---------------------------------------------------
    async def drop_for(self, seconds: float, mode: str = "rejoin") -> None:
        """Go away for ``seconds`` and come back (egress #210): "rejoin" disconnects the
        participant; "republish" unpublishes and republishes its tracks."""
        if mode not in ("rejoin", "republish"):
            raise ValueError(f"drop mode must be 'rejoin' or 'republish', not {mode!r}")
        assert self.room is not None, "publisher not started"
        self.drops += 1
        self._sending = False
        t_left = time.monotonic()
        t_back = t_left + seconds
        if mode == "rejoin":
            await self.room.disconnect()
        else:
            for pub in (self.video_pub, self.audio_pub):
                if pub is not None:
                    await self.room.local_participant.unpublish_track(pub.sid)
        self.video_pub = self.audio_pub = None
        await asyncio.sleep(max(0.0, t_back - time.monotonic()))
        if mode == "rejoin":
            await self._join()
        await self._publish()
        self._sending = True
        self.last_absence = time.monotonic() - t_left

    async def unpublish(self, kind: str) -> None:
        """Take the ``kind`` ("video" or "audio") track away, staying in the room (a camera
        switched off, a clip that ended)."""
        assert self.room is not None, "publisher not started"
        pub = self.video_pub if kind == "video" else self.audio_pub
        if pub is None:
            raise ValueError(f"no {kind} track is published")
        await self.room.local_participant.unpublish_track(pub.sid)
        if kind == "video":
            self.video_pub = None
        else:
            self.audio_pub = None

    async def republish(self, kind: str) -> None:
        """Publish the ``kind`` track again (a new track sid, the same source)."""
        assert self.room is not None, "publisher not started"
        if (self.video_pub if kind == "video" else self.audio_pub) is not None:
            raise ValueError(f"the {kind} track is published already")
        await self._publish(only=kind)

    def set_muted(self, muted: bool, kind: str | None = None) -> None:
        """Mute or unmute the audio, the video, or both (kind None)."""
        for k, pub in (("video", self.video_pub), ("audio", self.audio_pub)):
            if pub is None or (kind is not None and kind != k):
                continue
            track = pub.track
            if track is not None:
                track.mute() if muted else track.unmute()

    # -- sending -----------------------------------------------------------
    async def _video_loop(self) -> None:
        assert self._vsrc is not None
        period = 1.0 / float(self.gen.fps)
        i = 0
        while True:
            t = self._t0 + i * period
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:  # far behind (machine stalled): skip ahead, keep the timeline
                i = int((time.monotonic() - self._t0) / period)
                continue
            if self._sending:
                self._vsrc.capture_frame(to_rtc_video(self.gen.video_frame(i)))
                self.frames_sent += 1
            i += 1

    async def _audio_loop(self) -> None:
        """10 ms chunks (what direct capture takes), handed over in pairs at the time of
        the pair's first sample. libwebrtc dates an Opus packet (20 ms) by when its last
        chunk came in: paced one chunk at a time, every packet was dated 10 ms after its
        first sample, and an egress that honours sender reports put the beeps 10 ms late
        (measured: 14.5 ms against 4.5 ms paced in pairs)."""
        assert self._asrc is not None
        n = self.gen.audio_frame_samples
        pair = 2 * n if n * 100 == self.sample_rate else n
        s = 0
        while True:
            t = self._t0 + (s - s % pair) / self.sample_rate
            delay = t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:
                s = int((time.monotonic() - self._t0) * self.sample_rate) // pair * pair
                continue
            if self._sending:
                await self._asrc.capture_frame(to_rtc_audio(self.gen.audio_frame(s)))
                self.samples_sent += n
            s += n


def _capture_priority(pid: int) -> None:
    """A just-started child at real-time priority (round robin, the lowest level), as a
    capture device's threads are; else niced up. Its threads, all started later, inherit
    it. At normal priority, with the machine busy, the child's audio reached libwebrtc
    late and its sender reports dated the audio up to 37 ms late for seconds at a time
    (at most 23 ms, in 8 runs under the same load at this priority)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_RR, os.sched_param(1))
    except OSError:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, -10)


class PublisherProcess:
    """A SyntheticPublisher in a child process: a client of its own, as a real publisher
    is. In the egress's process it would share its CPU, GIL and livekit FFI runtime, and a
    late subscriber set-up there loses the returning publisher's first key frame (then
    livekit-server's PLI throttle holds the picture back another 0.5 s).

    The same calls as SyntheticPublisher, all async; driven over the child's stdin and
    stdout, one JSON object per line. The token goes by environment, never argv. The
    child's log is kept in ``log_path`` (a temporary file unless given).
    """

    def __init__(self, url: str, token: str, *, log_path: str | Path | None = None, **options: Any) -> None:
        self.url = url
        self._token = token
        self.options = options
        self._log_arg = Path(log_path) if log_path else None
        self.log_path: Path | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.state: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    # -- the state the child last reported ------------------------------------
    identity = property(lambda self: self.state.get("identity"))
    video_sid = property(lambda self: self.state.get("video_sid"))
    audio_sid = property(lambda self: self.state.get("audio_sid"))
    last_absence = property(lambda self: float(self.state.get("last_absence", 0.0)))
    frames_sent = property(lambda self: int(self.state.get("frames_sent", 0)))
    samples_sent = property(lambda self: int(self.state.get("samples_sent", 0)))
    drops = property(lambda self: int(self.state.get("drops", 0)))

    async def start(self) -> PublisherProcess:
        if self._log_arg is None:
            fd, name = tempfile.mkstemp(prefix="lkmedia-publisher-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        else:
            self.log_path = self._log_arg
        env = {**os.environ, "LKM_PUBLISHER_TOKEN": self._token}
        with open(self.log_path, "wb") as logf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "lkmedia.dev.publisher", "--url", self.url,
                "--options", json.dumps(self.options), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=logf, env=env, start_new_session=True)
        _capture_priority(self.proc.pid)
        try:
            await self._reply(30.0)
        except BaseException:
            await self._kill()
            raise
        return self

    async def drop_for(self, seconds: float, mode: str = "rejoin") -> None:
        await self._call(seconds + 30.0, cmd="drop", seconds=seconds, mode=mode)

    async def set_muted(self, muted: bool, kind: str | None = None) -> None:
        await self._call(10.0, cmd="mute", muted=muted, kind=kind)

    async def unpublish(self, kind: str) -> None:
        await self._call(10.0, cmd="unpublish", kind=kind)

    async def set_audio_mode(self, mode: str) -> None:
        """beep (the flash/beep pattern), tone (talking all the time) or silence."""
        await self._call(10.0, cmd="audio", mode=mode)

    async def republish(self, kind: str) -> None:
        await self._call(20.0, cmd="republish", kind=kind)

    async def refresh(self) -> dict[str, Any]:
        """Ask the child for its counters now."""
        return await self._call(10.0, cmd="state")

    async def stop(self, timeout: float = 10.0) -> int | None:
        p = self.proc
        if p is None:
            return None
        if p.returncode is None:
            with contextlib.suppress(Exception):
                await self._call(timeout, cmd="stop")
            try:
                await asyncio.wait_for(p.wait(), timeout)
            except TimeoutError:
                await self._kill()
        self.proc = None
        if p.returncode == 0 and self._log_arg is None and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        return p.returncode

    def tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    async def __aenter__(self) -> PublisherProcess:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _call(self, timeout: float, **cmd: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None, "publisher not started"
        async with self._lock:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            await self.proc.stdin.drain()
            return await self._reply(timeout)

    async def _reply(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"publisher exited with code {code}: {self.tail()}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"publisher: {msg['error']}")
        self.state = msg
        return msg

    async def _kill(self) -> None:
        p = self.proc
        if p is not None and p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


async def _serve(url: str, options: dict[str, Any]) -> int:
    """The child's side of PublisherProcess."""
    token = os.environ.pop("LKM_PUBLISHER_TOKEN")
    pub = SyntheticPublisher(url, token, **options)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(**msg: Any) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    def state() -> dict[str, Any]:
        room = pub.room
        return {"identity": room.local_participant.identity if room is not None else None,
                "video_sid": pub.video_sid, "audio_sid": pub.audio_sid, "last_absence": pub.last_absence,
                "frames_sent": pub.frames_sent, "samples_sent": pub.samples_sent, "drops": pub.drops}

    try:
        await pub.start()
    except Exception as e:
        say(error=f"could not start: {e}")
        await pub.stop()
        return 1
    say(**state())
    try:
        while line := await reader.readline():  # EOF: the parent has gone
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "stop":
                    break
                if cmd["cmd"] == "drop":
                    await pub.drop_for(float(cmd["seconds"]), cmd.get("mode", "rejoin"))
                elif cmd["cmd"] == "mute":
                    pub.set_muted(bool(cmd["muted"]), cmd.get("kind"))
                elif cmd["cmd"] == "audio":
                    pub.gen.audio_mode = str(cmd["mode"])
                elif cmd["cmd"] == "unpublish":
                    await pub.unpublish(str(cmd["kind"]))
                elif cmd["cmd"] == "republish":
                    await pub.republish(str(cmd["kind"]))
                elif cmd["cmd"] != "state":
                    raise ValueError(f"unknown command {cmd['cmd']!r}")
            except Exception as e:
                say(error=str(e))
                continue
            say(**state())
    finally:
        await pub.stop()
    say(**state())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The synthetic publisher as a child process "
                                             "(token in LKM_PUBLISHER_TOKEN); see PublisherProcess.")
    ap.add_argument("--url", required=True)
    ap.add_argument("--options", default="{}", help="SyntheticPublisher keyword arguments as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(_serve(args.url, json.loads(args.options)))


if __name__ == "__main__":
    sys.exit(main())
