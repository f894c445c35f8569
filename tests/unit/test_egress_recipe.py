"""Config -> recipe -> graph, driven by synthetic sources; outputs probed, EgressInfo filled."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from lkmedia.egress.config import egress_config
from lkmedia.egress.info import fill_results
from lkmedia.egress.recipe import build_recipe, participant_passthrough, published_video
from lkmedia.nodes.convert import FpsConverter
from lkmedia.nodes.encode import VideoEncoder
from lkmedia.nodes.tee import Tee
from lkmedia.probe import av_offsets, decode_errors, probe
from lkmedia.sources.synthetic import SyntheticSource

NOW = dt.datetime(2026, 11, 21, 6, 0, 0, tzinfo=dt.UTC)


async def test_participant_recipe_writes_mp4_hls_and_images(tmp_path: Path) -> None:
    req = lk.ParticipantEgressRequest(
        room_name="standup", identity="alice",
        advanced=lk.EncodingOptions(width=640, height=360, framerate=30, video_bitrate=800),
        file_outputs=[lk.EncodedFileOutput(filepath="{room_name}/{publisher_identity}-{time}.mp4")],
        segment_outputs=[lk.SegmentedFileOutput(filename_prefix="{room_name}/hls/seg", playlist_name="index.m3u8",
                                                segment_duration=2)],
        image_outputs=[lk.ImageOutput(capture_interval=1, width=320, height=180, filename_prefix="{room_name}/img")])
    cfg = egress_config("EG_test", "RM_1", req)
    r = build_recipe(cfg, str(tmp_path), live=False, now=NOW)
    src = SyntheticSource(width=640, height=360, fps=30, duration=4)
    r.graph.link(src.out("video"), r.video_in)  # type: ignore[arg-type]
    r.graph.link(src.out("audio"), r.audio_in)  # type: ignore[arg-type]
    assert not await r.graph.run()
    info = lk.EgressInfo(egress_id="EG_test")
    fill_results(info, r.results())
    (f,) = info.file_results
    assert f.location == str(tmp_path / "standup" / "alice-2026-11-21T060000.mp4")
    p = probe(f.location)
    assert p.stream("video").frames == 120 and p.stream("audio").codec == "aac"
    assert f.duration / 1e9 == pytest.approx(4.0, abs=0.2) and f.size == os.path.getsize(f.location)
    assert all(abs(o) <= 0.02 for o in av_offsets(f.location))
    (s,) = info.segment_results
    assert s.segment_count == 2 and s.playlist_name == "index.m3u8"
    assert s.duration / 1e9 == pytest.approx(4.0, abs=0.2) and decode_errors(s.playlist_location) == ""
    (i,) = info.image_results
    assert i.image_count == 4 and i.filename_prefix == "img"
    assert (tmp_path / "standup" / "img_00000.jpeg").exists()


async def test_audio_only_room_composite_mixes_tracks_into_ogg(tmp_path: Path) -> None:
    req = lk.RoomCompositeEgressRequest(room_name="r", audio_only=True,
                                        file_outputs=[lk.EncodedFileOutput(filepath="mix")])
    cfg = egress_config("EG_2", "", req)
    r = build_recipe(cfg, str(tmp_path), live=False, now=NOW)
    assert r.mixer is not None and cfg.file is not None and cfg.file.file_type == "ogg"
    for k in range(2):
        src = SyntheticSource(video=False, duration=3, name=f"p{k}")
        r.graph.link(src.out("audio"), r.mixer)
    await r.graph.run()
    info = lk.EgressInfo()
    fill_results(info, r.results())
    p = probe(info.file_results[0].location)
    assert info.file_results[0].filename == "mix.ogg" and p.stream("audio").codec == "opus"
    assert p.duration == pytest.approx(3.0, abs=0.2) and not p.has("video")


@pytest.mark.parametrize("codec,fmt,vcodec,encoder", [("vp8", "webm", "vp8", "libvpx"),
                                                       ("h264", "mp4", "h264", "libx264"),
                                                       ("vp9", "webm", "vp9", "libvpx-vp9"),
                                                       ("av1", "mp4", "av1", "libsvtav1"),
                                                       ("h265", "mp4", "h264", None)])
async def test_track_egress_keeps_the_codec_family_and_size(tmp_path: Path, codec: str, fmt: str, vcodec: str,
                                                            encoder: str | None) -> None:
    """VP8, VP9, AV1 and H.264 tracks are written as published (the recipe's input is the
    file sink: packets in, remuxed); the others (H.265) are decoded and re-encoded to H.264."""
    cfg = egress_config("EG_3", "", lk.TrackEgressRequest(room_name="r", track_id="TR_v",
                                                          file=lk.DirectFileOutput(filepath="t/{track_id}")))
    r = build_recipe(cfg, str(tmp_path), live=False, track_codec=codec, track_kind="video", now=NOW)
    assert r.passthrough == (encoder is not None) and (r.encoders == {}) == r.passthrough
    src = SyntheticSource(width=320, height=240, duration=2, audio=False)
    if encoder is not None:  # what a publisher sends: encoded packets
        r.graph.chain(src.out("video"), VideoEncoder(encoder, width=320, height=240, fps=30, bitrate=300_000),
                      r.video_in)  # type: ignore[arg-type]
    else:
        r.graph.link(src.out("video"), r.video_in)  # type: ignore[arg-type]
    assert not await r.graph.run()
    out = tmp_path / "t" / f"TR_v.{fmt}"
    v = probe(str(out)).stream("video")
    assert (v.codec, v.width, v.height, v.frames) == (vcodec, 320, 240, 60)
    assert decode_errors(str(out)) == ""


async def test_participant_video_without_images_has_no_tee_and_no_copies(tmp_path: Path) -> None:
    """One consumer of the video: the source feeds the frame-rate converter directly, which
    retimes the frames in place (issue 12: a Tee hop and a whole-frame copy per frame less).
    With images the video is shared: a Tee, and the converter copies what it retimes."""
    def recipe(images: bool) -> Any:
        req = lk.ParticipantEgressRequest(
            room_name="r", identity="alice", advanced=lk.EncodingOptions(width=320, height=180, framerate=30),
            file_outputs=[lk.EncodedFileOutput(filepath=f"{'img' if images else 'plain'}.mp4")],
            image_outputs=[lk.ImageOutput(capture_interval=1, filename_prefix="i")] if images else [])
        return build_recipe(egress_config("EG_t", "RM_1", req), str(tmp_path), live=False, now=NOW)

    plain = recipe(False)
    assert isinstance(plain.video_in, FpsConverter) and plain.video_in.owns_input
    assert not any(isinstance(n, Tee) for n in plain.graph.nodes.values())
    src = SyntheticSource(width=320, height=180, fps=30, duration=2)
    plain.graph.link(src.out("video"), plain.video_in)
    plain.graph.link(src.out("audio"), plain.audio_in)
    assert not await plain.graph.run()
    assert probe(str(tmp_path / "plain.mp4")).stream("video").frames == 60
    assert plain.video_in.stats()["copies"] == 0
    shared = recipe(True)
    assert isinstance(shared.video_in, Tee)
    assert [n.owns_input for n in shared.graph.nodes.values() if isinstance(n, FpsConverter)] == [False]


def _participant(width: int = 640, height: int = 360, **kw: Any) -> Any:
    req = lk.ParticipantEgressRequest(room_name="r", identity="alice",
                                      advanced=lk.EncodingOptions(width=width, height=height, framerate=30),
                                      file_outputs=[lk.EncodedFileOutput(filepath="pt.mp4")], **kw)
    return egress_config("EG_p", "RM_1", req)


def test_participant_passthrough_only_where_the_video_can_be_written_as_published() -> None:
    h264 = {"codec": "h264", "width": 640, "height": 360, "simulcast": False}
    assert participant_passthrough(_participant(), h264)
    assert not participant_passthrough(_participant(), {**h264, "codec": "vp8"})         # VP8 into MP4: no
    assert not participant_passthrough(_participant(), {**h264, "simulcast": True})      # layers change size
    assert not participant_passthrough(_participant(1280, 720), h264)                    # another size
    assert not participant_passthrough(_participant(), None)                             # nothing published yet
    assert not participant_passthrough(_participant(image_outputs=[lk.ImageOutput(capture_interval=1)]), h264)
    assert not participant_passthrough(_participant(segment_outputs=[lk.SegmentedFileOutput(
        filename_prefix="s")]), h264)
    part = lkm.ParticipantInfo(identity="alice", tracks=[
        lkm.TrackInfo(type=lkm.TrackType.AUDIO, mime_type="audio/opus"),
        lkm.TrackInfo(type=lkm.TrackType.VIDEO, source=lkm.TrackSource.SCREEN_SHARE, mime_type="video/VP8"),
        lkm.TrackInfo(type=lkm.TrackType.VIDEO, source=lkm.TrackSource.CAMERA, mime_type="video/H264",
                      width=640, height=360)])
    assert published_video(part) == h264
    assert published_video(part, screen_share=True) == {**h264, "codec": "vp8", "width": 0, "height": 0}


async def test_participant_passthrough_recipe_remuxes_video_and_encodes_audio(tmp_path: Path) -> None:
    """H.264 packets (as a publisher sends them) straight into the MP4; Opus packets decoded,
    mixed and encoded to AAC: no video encoder, the video frames all there, A/V in sync."""
    from lkmedia.nodes.encode import AudioEncoder

    r = build_recipe(_participant(), str(tmp_path), live=False, now=NOW, video_passthrough=True)
    assert r.passthrough and set(r.encoders) == {"audio"}
    src = SyntheticSource(width=640, height=360, fps=30, duration=4, sample_rate=48_000, channels=2,
                          audio_frame_samples=960)
    r.graph.chain(src.out("video"), VideoEncoder("libx264", width=640, height=360, fps=30, bitrate=800_000),
                  r.video_in)  # type: ignore[arg-type]
    r.graph.chain(src.out("audio"), AudioEncoder("opus", bitrate=64_000, sample_rate=48_000),
                  r.audio_in)  # type: ignore[arg-type]
    assert not await r.graph.run()
    out = str(tmp_path / "pt.mp4")
    p = probe(out)
    assert (p.stream("video").codec, p.stream("video").frames) == ("h264", 120)
    assert p.stream("audio").codec == "aac" and decode_errors(out) == ""
    offsets = av_offsets(out)
    assert len(offsets) >= 3 and all(abs(o) <= 0.040 for o in offsets), offsets
