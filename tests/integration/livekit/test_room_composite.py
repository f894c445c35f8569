"""Room composite with video, composed natively (no browser), against the real
livekit-server: tiles where LiveKit's layouts put them (each publisher a colour of its
own, found in the decoded file), names drawn, leaving and screen sharing and speaking
change the picture, UpdateLayout switches the layout, A/V in sync, one continuous file."""
from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from livekit import api
from livekit.protocol import egress as lk

from lkmedia.dev.lk import LkJoin, h264_clip
from lkmedia.dev.publisher import PublisherProcess
from lkmedia.dev.stack import DevStack
from lkmedia.nodes.layouts import layout_cells, letterbox
from lkmedia.probe import assert_av_sync, av_offsets, decode_errors, probe
from lkmedia.service.egress import EgressService
from lkmedia.testing.egress import (
    TERMINAL,
    EgressServiceProcess,
    S,
    egress_service,
    service_config_body,
    wait_egress,
)

from .tiles import COLOURS, H, W, colour_at


@pytest.fixture
async def service(livekit_stack: DevStack, tmp_path: Path) -> AsyncIterator[EgressService]:
    async with egress_service(livekit_stack, tmp_path) as svc:
        yield svc


@contextlib.asynccontextmanager
async def publishers(stack: DevStack, room: str, n: int, **options: Any) -> AsyncIterator[list[PublisherProcess]]:
    pubs = []
    try:
        for i in range(n):  # one after the other: join order is tile order
            p = PublisherProcess(stack.url, stack.token(f"p{i}", room), color=COLOURS[i % len(COLOURS)], **options)
            await p.start()
            pubs.append(p)
        yield pubs
    finally:
        await asyncio.gather(*(p.stop() for p in pubs))


async def _start(lkapi: api.LiveKitAPI, room: str, layout: str, **kw: Any) -> tuple[lk.EgressInfo, float]:
    info = await lkapi.egress.start_room_composite_egress(lk.RoomCompositeEgressRequest(
        room_name=room, layout=layout, preset=lk.H264_720P_30,
        file_outputs=[lk.EncodedFileOutput(filepath="rc.mp4")], **kw))
    active = await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
    # When the job went ACTIVE (its own stamp: media reached the encoder), on the monotonic
    # clock: seeing it through ListEgress lags by a poll and a round trip, over 0.5 s in CI
    # with five publishers on two cores (a 4.6 s file against 4.05 s "since ACTIVE").
    now = time.monotonic()
    return info, now - max(0.0, time.time() - active.updated_at / 1e9) if active.updated_at else now


async def _stop(lkapi: api.LiveKitAPI, info: lk.EgressInfo) -> tuple[lk.EgressInfo, float]:
    await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=info.egress_id))
    t = time.monotonic()
    done = await wait_egress(lkapi, info.egress_id, TERMINAL, 30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    return done, t


def frames(path: str) -> list[tuple[float, np.ndarray]]:
    """Every decoded frame as (seconds, yuv420p planes stacked as av gives them)."""
    with av.open(path) as c:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="yuv420p")) for f in c.decode(video=0)]


def centres(layout: str, n: int) -> list[tuple[int, int] | None]:
    out: list[tuple[int, int] | None] = []
    for cell in layout_cells(layout, n, 0, W, H):
        if cell is None:
            out.append(None)
            continue
        x, y, w, h = letterbox(640, 360, cell)
        out.append((x + w // 2, y + h // 2))
    return out


def at(fs: list[tuple[float, np.ndarray]], t: float) -> np.ndarray:
    return min(fs, key=lambda f: abs(f[0] - t))[1]


@pytest.mark.parametrize("n", [1, 2, 4, 5])
async def test_grid_puts_each_publisher_where_the_layout_says_with_its_name(
        livekit_stack: DevStack, service: EgressService, room_name: str, n: int) -> None:
    async with publishers(livekit_stack, room_name, n), livekit_stack.api() as lkapi:
        info, t_active = await _start(lkapi, room_name, "grid")
        await asyncio.sleep(4)
        done, t_stop = await _stop(lkapi, info)
    (f,) = done.file_results
    p = probe(f.location)
    assert p.duration == pytest.approx(t_stop - t_active, abs=0.5) and decode_errors(f.location) == ""
    fs = frames(f.location)
    img = at(fs, fs[-1][0] - 1.0)
    cells = layout_cells("grid", n, 0, W, H)
    for i, c in enumerate(centres("grid", n)):
        assert c is not None and colour_at(img, *c) == i, (i, c)
        x, y, w, h = cells[i]  # type: ignore[misc]
        label = img[y + h - 30:y + h - 4, x + 4:x + 120]  # the name, bottom left of the tile
        assert (label >= 225).sum() > 20, f"no name drawn on tile {i}"


async def test_a_participant_who_leaves_leaves_the_picture_and_the_file_goes_on(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    async with publishers(livekit_stack, room_name, 2) as pubs, livekit_stack.api() as lkapi:
        info, t_active = await _start(lkapi, room_name, "grid")
        await asyncio.sleep(3)
        t_left = time.monotonic() - t_active
        await pubs[1].stop()
        await asyncio.sleep(3)
        done, t_stop = await _stop(lkapi, info)
    (f,) = done.file_results
    p = probe(f.location)
    assert p.duration == pytest.approx(t_stop - t_active, abs=0.5) and decode_errors(f.location) == ""
    fs = frames(f.location)
    start = fs[0][0]
    before, after = at(fs, start + t_left - 1.0), at(fs, start + t_left + 1.5)
    two, one = centres("grid", 2), centres("grid", 1)
    assert colour_at(before, *two[0]) == 0 and colour_at(before, *two[1]) == 1  # type: ignore[misc]
    assert colour_at(after, *one[0]) == 0 and colour_at(after, 1100, 100) == 0  # p0 alone, full frame


async def test_a_screen_share_turns_grid_into_speaker_with_the_share_in_focus(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    async with publishers(livekit_stack, room_name, 2), livekit_stack.api() as lkapi:
        info, t_active = await _start(lkapi, room_name, "grid")
        await asyncio.sleep(2)
        t_share = time.monotonic() - t_active
        share = PublisherProcess(livekit_stack.url, livekit_stack.token("sharer", room_name), color=COLOURS[4],
                                 video_source="screen_share", audio=False)
        await share.start()
        try:
            await asyncio.sleep(3)
        finally:
            await share.stop()
        done, _ = await _stop(lkapi, info)
    fs = frames(done.file_results[0].location)
    img = at(fs, fs[0][0] + t_share + 2.0)
    focus = layout_cells("speaker", 3, 0, W, H)[0]
    assert focus is not None
    x, y, w, h = letterbox(640, 360, focus)
    assert colour_at(img, x + w // 2, y + h // 2) == 4  # the share, large on the right
    carousel = [c for c in layout_cells("speaker", 3, 0, W, H)[1:] if c is not None]
    seen = {colour_at(img, cx + cw // 2, cy + ch // 2) for cx, cy, cw, ch in carousel}
    assert seen == {0, 1}  # the cameras in the carousel on the left


async def test_in_speaker_layout_the_focus_follows_whoever_speaks(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    async with publishers(livekit_stack, room_name, 2, audio_mode="silence") as pubs, \
            livekit_stack.api() as lkapi:
        info, t0 = await _start(lkapi, room_name, "speaker")
        await pubs[1].set_audio_mode("tone")
        await asyncio.sleep(3)
        t_switch = time.monotonic() - t0
        await pubs[1].set_audio_mode("silence")
        await pubs[0].set_audio_mode("tone")
        await asyncio.sleep(3)
        done, _ = await _stop(lkapi, info)
    fs = frames(done.file_results[0].location)
    focus = layout_cells("speaker", 2, 0, W, H)[0]
    assert focus is not None
    x, y, w, h = letterbox(640, 360, focus)
    start = fs[0][0]
    assert colour_at(at(fs, start + t_switch - 0.5), x + w // 2, y + h // 2) == 1  # p1 speaks
    assert colour_at(at(fs, start + t_switch + 2.5), x + w // 2, y + h // 2) == 0  # then p0


async def test_update_layout_switches_from_grid_to_speaker_within_a_second(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    async with publishers(livekit_stack, room_name, 2), livekit_stack.api() as lkapi:
        info, t0 = await _start(lkapi, room_name, "grid")
        await asyncio.sleep(2)
        t_update = time.monotonic() - t0
        await lkapi.egress.update_layout(lk.UpdateLayoutRequest(egress_id=info.egress_id, layout="speaker"))
        await asyncio.sleep(3)
        done, _ = await _stop(lkapi, info)
    (f,) = done.file_results
    assert decode_errors(f.location) == ""
    fs = frames(f.location)
    start = fs[0][0]
    grid, speaker = centres("grid", 2), centres("speaker", 2)
    before = at(fs, start + t_update - 0.5)
    assert colour_at(before, *grid[0]) == 0 and colour_at(before, *grid[1]) == 1  # type: ignore[misc]
    switched = next(t for t, img in fs if t > start + t_update - 0.2 and colour_at(img, 60, 60) is not None)
    assert switched - (start + t_update) < 1.0  # the carousel appeared within 1 s
    after = at(fs, start + t_update + 2)
    assert colour_at(after, *speaker[0]) is not None and colour_at(after, 60, 60) is not None  # type: ignore[misc]
    assert [t for t, _ in fs] == sorted(t for t, _ in fs) and len(fs) >= 30 * 4  # one continuous file


async def test_native_composite_keeps_audio_and_video_in_sync(
        livekit_stack: DevStack, service: EgressService, publisher: object, room_name: str) -> None:
    async with livekit_stack.api() as lkapi:
        info, t_active = await _start(lkapi, room_name, "speaker")
        # 8 s: the composite is ACTIVE at once (its canvas starts with the background), while
        # the publisher's first key frame can come 2-3 s later under load (CI: 3 flashes in 6 s)
        await asyncio.sleep(8)
        done, t_stop = await _stop(lkapi, info)
    (f,) = done.file_results
    p = probe(f.location)
    assert p.has("video") and p.has("audio") and decode_errors(f.location) == ""
    assert p.duration == pytest.approx(t_stop - t_active, abs=0.5)
    offsets = av_offsets(f.location)
    print(f"A/V offsets through the native composite (ms): {[round(o * 1000, 1) for o in offsets]}")
    assert len(offsets) >= 4, offsets
    assert_av_sync(offsets)


async def test_sixteen_publishers_in_a_720p30_grid_for_a_minute(
        livekit_stack: DevStack, room_name: str, tmp_path: Path) -> None:
    """16 `lk room join` publishers (an independent client) into a 720p30 grid: the file has
    at least 29.5 frames a second and no tile showed a picture older than 200 ms."""
    body = service_config_body(livekit_stack)
    clip = h264_clip(tmp_path / "tile.h264", 75, width=320, height=180, bitrate="300k")
    joins = [LkJoin(livekit_stack, room_name, f"lk{i:02d}", [clip]) for i in range(16)]
    with EgressServiceProcess(body, tmp_path / "w", name="w") as svc, contextlib.ExitStack() as stack:
        for j in joins:
            stack.enter_context(j)
        async with livekit_stack.api() as lkapi:
            await _video_tracks(lkapi, room_name, 16)
            info, t_active = await _start(lkapi, room_name, "grid")
            t_cpu = _cpu_seconds(svc.proc.pid)  # type: ignore[union-attr]
            await asyncio.sleep(60)
            cpu = _cpu_seconds(svc.proc.pid) - t_cpu  # type: ignore[union-attr]
            done, t_stop = await _stop(lkapi, info)
    (f,) = done.file_results
    p = probe(f.location)
    v = p.stream("video")
    fps = v.frames / v.duration
    stats = next(line for line in svc.tail(200).splitlines() if "compositor {" in line)
    age = int(stats.split("'max_age_ms': ")[1].split(",")[0])
    stale = int(stats.split("'stale': ")[1].split(",")[0].rstrip("}"))
    print(f"16 publishers, 720p30 grid: {fps:.2f} fps in the file, oldest tile picture {age} ms, "
          f"{stale} stale tile frames; egress CPU {cpu / (t_stop - t_active):.2f} s per media s")
    assert fps >= 29.5, (v.frames, v.duration)
    assert age <= 200 and stale == 0, stats
    assert decode_errors(f.location) == ""


async def _video_tracks(lkapi: api.LiveKitAPI, room: str, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(api.TwirpError):
            res = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
            if sum(1 for p in res.participants for t in p.tracks if t.type == 1) >= n:
                return
        assert time.monotonic() < deadline, f"{n} video tracks not published in {room} within {timeout:g} s"
        await asyncio.sleep(0.25)


def _cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root`` and every process under it."""
    from lkmedia.worker.sampler import process_tree

    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def test_a_recording_started_on_every_room_started_webhook_against_a_fleet_with_room_for_four(
        livekit_stack: DevStack, tmp_path: Path) -> None:
    """The load a backend makes when it records every room as it starts: 10 rooms, each
    created by a publisher joining (`lk room join`), one StartRoomCompositeEgress each,
    against 2 workers with room for 2 each. None is refused; all complete, in request order."""
    body = service_config_body(livekit_stack, "cpu_cost:\n  native_room_composite_cpu_cost: 0.7\n"
                                              "  max_cpu_utilization: 0.9\n")
    clip = h264_clip(tmp_path / "room.h264", 90, width=320, height=180, bitrate="200k")
    rooms = [f"webhook-{k}-{os.getpid()}" for k in range(10)]
    small = lk.EncodingOptions(width=320, height=180, framerate=15, video_bitrate=300, audio_bitrate=64)
    with EgressServiceProcess(body, tmp_path / "w1", name="w1"), EgressServiceProcess(body, tmp_path / "w2", name="w2"), \
            contextlib.ExitStack() as joins:
        async with livekit_stack.api() as lkapi:
            ids: list[str] = []
            for room in rooms:  # room_started: the backend asks at once
                joins.enter_context(LkJoin(livekit_stack, room, "host", [clip]))
                await _video_tracks(lkapi, room, 1, timeout=30)
                info = await lkapi.egress.start_room_composite_egress(lk.RoomCompositeEgressRequest(
                    room_name=room, layout="grid", advanced=small, file_outputs=[lk.EncodedFileOutput(filepath="r.mp4")]))
                ids.append(info.egress_id)
            launched: dict[str, float] = {}
            active: dict[str, float] = {}
            final: dict[str, lk.EgressInfo] = {}
            deadline = time.monotonic() + 240
            while len(final) < len(ids):
                assert time.monotonic() < deadline, f"{len(final)}/{len(ids)} done"
                for eid in ids:
                    if eid in final:
                        continue
                    info = (await lkapi.egress.list_egress(lk.ListEgressRequest(egress_id=eid))).items[0]
                    now = time.monotonic()
                    if eid not in launched and not info.details.startswith("queued"):
                        launched[eid] = now
                    if info.status == S.EGRESS_ACTIVE and eid not in active:
                        active[eid] = now
                    if eid in active and now - active[eid] > 2.5 and info.status == S.EGRESS_ACTIVE:
                        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=eid))
                    if info.status in TERMINAL:
                        final[eid] = info
                await asyncio.sleep(0.1)
    bad = {eid: (S.Name(i.status), i.error) for eid, i in final.items() if i.status != S.EGRESS_COMPLETE}
    assert not bad, bad
    order = [launched[eid] for eid in ids]
    late = [k for k in range(1, len(ids)) if order[k] < max(order[:k]) - 1.0]  # (status reports lag ~1 s)
    assert not late, (late, order)
    for info in final.values():
        p = probe(info.file_results[0].location)
        assert p.has("video") and p.duration and p.duration > 1.5


async def test_one_composite_to_mp4_hls_rtmp_and_images_at_once(
        livekit_stack: DevStack, service: EgressService, room_name: str, rtmp_server: Any) -> None:
    async with publishers(livekit_stack, room_name, 2), livekit_stack.api() as lkapi:
        info = await lkapi.egress.start_room_composite_egress(lk.RoomCompositeEgressRequest(
            room_name=room_name, layout="speaker-light", preset=lk.H264_720P_30,
            file_outputs=[lk.EncodedFileOutput(filepath="all.mp4")],
            segment_outputs=[lk.SegmentedFileOutput(filename_prefix="hls/seg", playlist_name="index.m3u8",
                                                    segment_duration=2)],
            stream_outputs=[lk.StreamOutput(urls=[rtmp_server.url("composite_key")])],
            image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180, filename_prefix="img/thumb")]))
        await wait_egress(lkapi, info.egress_id, {S.EGRESS_ACTIVE}, 30)
        await asyncio.sleep(5)
        done, _ = await _stop(lkapi, info)
    (f,) = done.file_results
    (seg,) = done.segment_results
    (img,) = done.image_results
    (st,) = done.stream_results
    p = probe(f.location)
    assert p.has("audio") and (p.stream("video").width, p.stream("video").height) == (W, H)
    assert seg.segment_count >= 2 and decode_errors(seg.playlist_location) == ""
    assert img.image_count >= 4 and st.status == lk.StreamInfo.FINISHED and "composite_key" not in st.url
    (rec,) = rtmp_server.recordings("composite_key")
    assert probe(str(rec)).has("video")
    fs = frames(f.location)
    assert fs[-30][1][10, W - 10] > 200  # -light: a white background beside the focus


async def test_video_only_composite_has_no_audio(
        livekit_stack: DevStack, service: EgressService, room_name: str) -> None:
    async with publishers(livekit_stack, room_name, 1), livekit_stack.api() as lkapi:
        info, _ = await _start(lkapi, room_name, "single-speaker", video_only=True)
        await asyncio.sleep(3)
        done, _ = await _stop(lkapi, info)
    p = probe(done.file_results[0].location)
    assert p.has("video") and not p.has("audio")
    assert colour_at(frames(done.file_results[0].location)[-10][1], 640, 360) == 0


async def test_lk_cli_starts_a_room_composite(
        livekit_stack: DevStack, service: EgressService, room_name: str, tmp_path: Path) -> None:
    """`lk egress start --type room-composite` (livekit-cli v2.18.2) -> the native engine."""
    import json

    from lkmedia.dev.stack import find_binary

    env = {"LIVEKIT_URL": livekit_stack.http_url, "LIVEKIT_API_KEY": livekit_stack.api_key,
           "LIVEKIT_API_SECRET": livekit_stack.api_secret, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    req = tmp_path / "rc.json"
    req.write_text(json.dumps({"room_name": room_name, "layout": "grid", "preset": "H264_720P_30",
                               "file_outputs": [{"filepath": "cli-rc.mp4"}]}))
    async with publishers(livekit_stack, room_name, 2), livekit_stack.api() as lkapi:
        proc = await asyncio.create_subprocess_exec(find_binary("lk"), "egress", "start", "--type", "room-composite",
                                                    str(req), env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text
        egress_id = next(w for w in text.replace('"', " ").split() if w.startswith("EG_"))
        await wait_egress(lkapi, egress_id, {S.EGRESS_ACTIVE}, 30)
        await asyncio.sleep(3)
        await lkapi.egress.stop_egress(lk.StopEgressRequest(egress_id=egress_id))
        done = await wait_egress(lkapi, egress_id, TERMINAL, 30)
    assert done.status == S.EGRESS_COMPLETE, done.error
    fs = frames(done.file_results[0].location)
    img = fs[-15][1]
    assert [colour_at(img, *c) for c in centres("grid", 2) if c is not None] == [0, 1]
