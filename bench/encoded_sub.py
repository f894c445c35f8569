"""CPU of the encoded-media subscriber per media second: one (or N) Opus tracks received
by EncodedTrackSource and written to OGG (or dropped), the publisher in another process;
or (``--kind video``) VP8 720p30 tracks at 1.7 Mbps, published by ``lk room join`` from
the egress bench's clip, written to WebM.

    python3 -m bench.encoded_sub --seconds 30            # one track, into an OGG
    python3 -m bench.encoded_sub --tracks 10 --sink none # ten, received and dropped
    python3 -m bench.encoded_sub --kind video            # one VP8 track, into a WebM

Prints a JSON line: CPU seconds of this process (user + sys) per media second per track,
measured over the steady part (after a warm-up). Where it goes: ``py-spy record -p PID``
(Python 3.11 gives its threads no OS names, so /proc cannot split it by thread).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lkmedia.core import Graph, Sink
from lkmedia.dev.lk import LkJoin
from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack
from lkmedia.sinks.file import FileSink
from lkmedia.sources.livekit_encoded import EncodedTrackSource


class DropSink(Sink):
    """Takes packets and forgets them (the cost of receiving alone)."""

    async def run(self) -> None:
        from lkmedia.core import EOS, get_any
        ports = list(self.inputs.values())
        while ports:
            port, item = await get_any(ports)
            if item is EOS:
                ports.remove(port)


def _vp8_clip(seconds: float) -> Path:
    """testsrc2 720p30 as VP8 at 1.7 Mbps (the egress bench's publisher bitrate), a key
    frame every 2 s, as an IVF for ``lk room join`` (which ignores key-frame requests)."""
    from bench.peers import ROOT, _ffmpeg

    cache = ROOT / "bench" / "results" / "inputs"
    cache.mkdir(parents=True, exist_ok=True)
    return _ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-t", f"{seconds:.0f}",
                    "-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1700k", "-g", "60",
                    "-auto-alt-ref", "0"], cache / f"encsub_testsrc2_vp8_1280x720_30_1700k_{seconds:.0f}s.ivf")


async def main(seconds: float, tracks: int, sink: str, warmup: float, kind: str,
               profile: str | None = None) -> dict[str, Any]:
    with contextlib.ExitStack() as procs:
        async with DevStack() as stack:
            if kind == "audio":
                pubs = [PublisherProcess(stack.url, stack.token(f"pub{i}", "bench"), video=False, audio=True,
                                         audio_mode="tone") for i in range(tracks)]
                await asyncio.gather(*(p.start() for p in pubs))
                identities = [p.identity for p in pubs]
            else:
                pubs = []
                clip = _vp8_clip(seconds + warmup + 10)
                identities = [f"vp8-{i}" for i in range(tracks)]
                for ident in identities:
                    procs.enter_context(LkJoin(stack, "bench", ident, [clip]))
            g = Graph()
            tmp = tempfile.mkdtemp(prefix="lkm-encsub-")
            sources = []
            ext = "ogg" if kind == "audio" else "webm"
            for i, ident in enumerate(identities):
                src = EncodedTrackSource(stack.url, stack.token(f"egress{i}", "bench"),
                                         participant_identity=ident, kind=kind, ice_servers=[])
                g.link(src, FileSink(f"{tmp}/t{i}.{ext}", inline_writes=True) if sink == "file" else DropSink())
                sources.append(src)
            run = asyncio.create_task(g.run())
            await asyncio.sleep(warmup)

            def packets() -> int:
                return sum(o.packetizer.packets for s in sources if (o := s.outs[kind]).packetizer)

            prof = cProfile.Profile() if profile else None
            pk0 = packets()
            c0, w0 = time.process_time(), time.monotonic()
            if prof is not None:
                prof.enable()
            await asyncio.sleep(seconds)
            if prof is not None:
                prof.disable()
                prof.dump_stats(str(profile))
            c1, w1 = time.process_time(), time.monotonic()
            pk1 = packets()
            await g.stop()
            await run
            await asyncio.gather(*(p.stop() for p in pubs))
            media = (pk1 - pk0) * (0.02 if kind == "audio" else 1 / 30)
            return {"tracks": tracks, "kind": kind, "sink": sink, "wall": round(w1 - w0, 2),
                    "media_seconds": round(media, 2),
                    "cpu": round(c1 - c0, 3),
                    "cpu_per_media_second_per_track": round((c1 - c0) / media, 4) if media else None,
                    "stats": sources[0].stats(), "pid": os.getpid()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--tracks", type=int, default=1)
    ap.add_argument("--sink", choices=("file", "none"), default="file")
    ap.add_argument("--kind", choices=("audio", "video"), default="audio")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--profile", metavar="FILE", help="cProfile the event loop's thread over the measured "
                    "seconds into FILE (pstats; its overhead inflates the CPU figure)")
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.seconds, a.tracks, a.sink, a.warmup, a.kind, a.profile)), default=str))
