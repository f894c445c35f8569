"""Participant egress (H264_720P_30 MP4, transcoding) of an ``lk room join --publish
clip.h264`` publisher: the input the Go egress v1.9.1 was measured on here (issue 12:
0.497-0.509 CPU s per media s), beside the ffmpeg CLI decoding the same clip and
encoding it with the x264 settings the egress wrote.

    python3 -m bench.participant_lk --seconds 30 --runs 2

Prints one JSON line per run (the service's whole process tree, API call -> COMPLETE,
less its idle figure, per media second) and one with the peer and the ratios.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench import peers
from bench.livekit_rig import egress_service, make_clip, publishers_up, record
from bench.peers import ROOT
from bench.room_composite import ffmpeg_grid_peer
from bench.sampling import TreeSampler

GO_EGRESS = (0.497, 0.509)  # CPU s per media s, Go egress v1.9.1, same input, these machines


def main(seconds: float, runs: int) -> dict[str, Any]:
    from livekit.protocol import egress as lk

    from lkmedia.dev.lk import LkJoin
    from lkmedia.dev.stack import DevStack

    work = ROOT / "bench" / "results" / "participant_lk"
    work.mkdir(parents=True, exist_ok=True)
    clip = make_clip(ROOT / "bench" / "results" / "inputs", seconds * runs + 30)  # (lk leaves when it ends)
    out: list[dict[str, Any]] = []
    with DevStack(workdir=work / "stack") as stack, egress_service(stack, work) as (svc, tmp):
        s = TreeSampler(svc.pid)
        time.sleep(5)
        idle = s.stop() / 5.0
        with LkJoin(stack, "bench-lk", "lk0", [clip], log_path=work / "lk.log"):
            asyncio.run(publishers_up(stack, "bench-lk", 1))

            def start(lkapi: Any) -> Any:
                return lkapi.egress.start_participant_egress(lk.ParticipantEgressRequest(
                    room_name="bench-lk", identity="lk0", preset=lk.H264_720P_30,
                    file_outputs=[lk.EncodedFileOutput(filepath="lk0.mp4")]))

            for i in range(runs):
                r = asyncio.run(record(stack, svc, tmp, start, seconds, idle))
                print(json.dumps({"run": i, **r}), flush=True)
                out.append(r)
    lk_opts = peers.x264_options(Path(out[0]["location"]))
    peer_out = work / "ffmpeg_peer.mp4"
    cmd = ffmpeg_grid_peer(clip, 1, peer_out, lk_opts, out[0]["file_duration_s"])
    ff = peers.measure(cmd)
    peer = ff.cpu / out[0]["file_duration_s"] if ff.ok else None
    mine = sorted(r["cpu_per_media_s"] for r in out)
    summary = {"lkmedia": mine, "go_egress": GO_EGRESS, "ratio_to_go": [round(m / (sum(GO_EGRESS) / 2), 3) for m in mine],
               "ffmpeg_cli": round(peer, 4) if peer else None,
               "ratio_to_ffmpeg": [round(m / peer, 3) for m in mine] if peer else None,
               "goal": "<= 0.9 x the Go egress (<= 0.453)"}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    main(args.seconds, args.runs)
    sys.exit(0)
