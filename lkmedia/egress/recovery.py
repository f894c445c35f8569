"""Reporting an egress whose process died (SIGKILL, OOM, a crash, a hang), from what it
left in its directory: fragmented MP4s play up to their last 0.5 s fragment. Each file is
uploaded where the request said (nothing recorded is lost) and the egress ends FAILED
with the cause and what was saved. Runs in a job process of its own, never on the
service's event loop; reading a long recording runs on a thread beside this loop, which
keeps answering the service's pings.
"""
from __future__ import annotations

import asyncio
import os
import time

from livekit.protocol import egress as lk

from ..storage.factory import settings_from_yaml
from ..worker.kind import Report
from .errors import EgressError
from .info import set_status
from .spec import EgressLaunch
from .uploads import Uploads

MEDIA_EXTENSIONS = (".mp4", ".ogg", ".webm", ".mp3", ".mkv", ".flv", ".ts", ".m3u8", ".jpeg", ".jpg")
NOT_FILE_RESULTS = (".ts", ".m3u8", ".jpeg", ".jpg")  # HLS segments and images: uploaded, not file results


async def recover(launch: EgressLaunch, info: lk.EgressInfo, cause: str, report: Report) -> lk.EgressInfo:
    cfg = launch.spec.config
    job_dir = os.path.join(launch.tmp_dir, cfg.egress_id)
    try:
        names = sorted(_media_files(job_dir))
    except FileNotFoundError:
        names = []
    uploads = Uploads(cfg, job_dir, settings_from_yaml(launch.storage), info.started_at)
    problems: list[str] = []
    saved: list[str] = []
    try:
        try:
            await uploads.open()
        except EgressError as e:
            problems.append(str(e))
        up = uploads.main_uploader()
        now = time.time_ns()
        for name in names:
            path = os.path.join(job_dir, name)
            duration = await asyncio.to_thread(media_seconds, path)
            size = os.path.getsize(path)  # before the upload deletes the local copy
            location = path
            if up is not None:
                r = await up.upload_file(path, name)
                location = r.location
                if not r.stored:
                    problems.append(r.error or f"upload of {name} failed; kept at {r.location}")
            if name.lower().endswith(NOT_FILE_RESULTS):
                continue
            info.file_results.append(lk.FileInfo(filename=name, location=location, size=size,
                                                 duration=int(duration * 1e9), started_at=info.started_at,
                                                 ended_at=now))
            saved.append(f"{name} ({duration:.1f} s)")
    finally:
        await uploads.close()
    error = (f"{cause}; " + (f"partial output saved: {', '.join(saved)}" if saved else "no output was saved")
             + ("; " + "; ".join(problems) if problems else ""))
    set_status(info, lk.EgressStatus.EGRESS_FAILED, error)
    await report(info)
    return info


def _media_files(job_dir: str) -> list[str]:
    out = []
    for root, _, files in os.walk(job_dir):
        for f in files:
            if f.lower().endswith(MEDIA_EXTENSIONS):
                out.append(os.path.relpath(os.path.join(root, f), job_dir))
    return out


def media_seconds(path: str) -> float:
    """Duration of a (possibly unfinished) media file, from its packets: from the first
    packet of any stream to the end of the last. (A killed recording's streams end apart:
    its last video fragment may be lost while its audio goes on.)"""
    import av

    try:
        with av.open(path) as c:
            if not c.streams:
                return 0.0
            first = last = None
            for pk in c.demux():
                if pk.pts is None or pk.time_base is None:
                    continue
                t0 = float(pk.pts * pk.time_base)
                t1 = t0 + float((pk.duration or 0) * pk.time_base)
                first = t0 if first is None else min(first, t0)
                last = t1 if last is None else max(last, t1)
            return max(0.0, (last or 0.0) - (first or 0.0))
    except Exception:  # unreadable: reported with no duration
        return 0.0
