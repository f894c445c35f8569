"""The main job on an embedded default: a local dev stack recording through the real API.

Starts Redis and livekit-server (dev mode, on free loopback ports), the lkmedia egress
service, and a participant publishing the synthetic flash/beep A/V; then asks
livekit-server for a participant egress through the public API, records for
``seconds``, stops it and prints the final EgressInfo. Outputs land in ``out_dir``.
"""
from __future__ import annotations

import asyncio
import os

from google.protobuf.json_format import MessageToJson
from livekit.protocol import egress as lk

from .dev.egress import service_config_body, wait_egress
from .dev.publisher import PublisherProcess
from .dev.stack import DevStack
from .probe import probe
from .service.config import parse_config
from .service.egress import EgressService

S = lk.EgressStatus
ROOM = "lkmedia-demo"


async def egress_demo(out_dir: str, seconds: float = 10.0) -> lk.EgressInfo:
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with DevStack() as stack:
        conf = parse_config(service_config_body(stack), source="<demo>")
        service = EgressService(conf, tmp_dir=out_dir)
        await service.start()
        try:
            pub = PublisherProcess(stack.url, stack.token("publisher", ROOM), width=1280, height=720)
            await pub.start()
            try:
                async with stack.api() as lkapi:
                    info = await lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                        room_name=ROOM, identity="publisher", preset=lk.H264_720P_30,
                        file_outputs=[lk.EncodedFileOutput(filepath="{room_name}-{time}.mp4")]))
                    print(f"egress {info.egress_id}: {S.Name(info.status)}", flush=True)
                    await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE, S.EGRESS_FAILED}, 30)
                    print(f"recording {seconds:g} s ...", flush=True)
                    await asyncio.sleep(seconds)
                    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
                    final = await wait_egress(lkapi, info.egress_id, {S.EGRESS_COMPLETE, S.EGRESS_FAILED,
                                                                 S.EGRESS_ABORTED, S.EGRESS_LIMIT_REACHED}, 60)
            finally:
                await pub.stop()
        finally:
            await service.close(drain_timeout=30)
    print(MessageToJson(final, indent=2), flush=True)
    for f in final.file_results:
        p = probe(f.location)
        kinds = ", ".join(f"{s.kind} {s.codec}" for s in p.streams)
        print(f"wrote {f.location}: {p.duration or 0:.2f} s ({kinds})", flush=True)
    return final


def run(out_dir: str, seconds: float) -> int:
    final = asyncio.run(egress_demo(out_dir, seconds))
    return 0 if final.status == S.EGRESS_COMPLETE else 1
