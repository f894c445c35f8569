"""CPU of the encoded-media subscriber per media second: one (or N) Opus tracks received
by EncodedTrackSource and written to OGG (or dropped), the publisher in another process.

    python3 -m bench.encoded_sub --seconds 30            # one track, into an OGG
    python3 -m bench.encoded_sub --tracks 10 --sink none # ten, received and dropped

Prints a JSON line: CPU seconds of this process (user + sys) per media second per track,
measured over the steady part (after a warm-up). Where it goes: ``py-spy record -p PID``
(Python 3.11 gives its threads no OS names, so /proc cannot split it by thread).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from typing import Any

from lkmedia.core import Graph, Sink
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


async def main(seconds: float, tracks: int, sink: str, warmup: float) -> dict[str, Any]:
    async with DevStack() as stack:
        pubs = [PublisherProcess(stack.url, stack.token(f"pub{i}", "bench"), video=False, audio=True,
                                 audio_mode="tone") for i in range(tracks)]
        await asyncio.gather(*(p.start() for p in pubs))
        g = Graph()
        tmp = tempfile.mkdtemp(prefix="lkm-encsub-")
        sources = []
        for i, p in enumerate(pubs):
            src = EncodedTrackSource(stack.url, stack.token(f"egress{i}", "bench"),
                                     participant_identity=p.identity, kind="audio", ice_servers=[])
            g.link(src, FileSink(f"{tmp}/a{i}.ogg") if sink == "ogg" else DropSink())
            sources.append(src)
        run = asyncio.create_task(g.run())
        await asyncio.sleep(warmup)
        pk0 = sum(s.outs["audio"].packetizer.packets for s in sources if s.outs["audio"].packetizer)
        c0, w0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        c1, w1 = time.process_time(), time.monotonic()
        pk1 = sum(s.outs["audio"].packetizer.packets for s in sources if s.outs["audio"].packetizer)
        await g.stop()
        await run
        await asyncio.gather(*(p.stop() for p in pubs))
        media = (pk1 - pk0) * 0.02
        return {"tracks": tracks, "sink": sink, "wall": round(w1 - w0, 2), "media_seconds": round(media, 2),
                "cpu": round(c1 - c0, 3),
                "cpu_per_media_second_per_track": round((c1 - c0) / media, 4) if media else None,
                "stats": sources[0].stats()}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--tracks", type=int, default=1)
    ap.add_argument("--sink", choices=("ogg", "none"), default="ogg")
    ap.add_argument("--warmup", type=float, default=3.0)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(main(a.seconds, a.tracks, a.sink, a.warmup)), default=str))
