"""Egress requests -> validated config: the Go egress's rules, defaults and messages."""
from __future__ import annotations

import pytest
from livekit.protocol import egress as lk
from livekit.protocol import models as lkm

from lkmedia.egress.config import egress_config
from lkmedia.egress.errors import InvalidRequest


def mp4(path: str = "rec/{room_name}.mp4") -> lk.EncodedFileOutput:
    return lk.EncodedFileOutput(file_type=lk.EncodedFileType.MP4, filepath=path)


def participant(**kw: object) -> lk.ParticipantEgressRequest:
    base: dict[str, object] = {"room_name": "room", "identity": "alice", "file_outputs": [mp4()]}
    base.update(kw)
    return lk.ParticipantEgressRequest(**base)  # type: ignore[arg-type]


def error_of(req: object) -> str:
    with pytest.raises(InvalidRequest) as ei:
        egress_config("EG_1", "RM_1", req)
    assert ei.value.code == "invalid_argument"
    return str(ei.value)


def test_participant_defaults_match_the_go_egress() -> None:
    c = egress_config("EG_1", "RM_1", participant())
    e = c.encoding
    assert (c.request_type, c.identity, c.audio_enabled, c.video_enabled) == ("participant", "alice", True, True)
    assert (e.width, e.height, e.fps, e.video_bitrate, e.profile) == (1280, 720, 30, 3000, "main")
    assert (e.audio_codec, e.audio_bitrate, e.audio_frequency) == ("aac", 128, 44100)
    assert c.file is not None and c.file.file_type == "mp4" and c.outputs == ["file"]


def test_preset_and_advanced_options() -> None:
    c = egress_config("EG_1", "", participant(preset=lk.PORTRAIT_H264_1080P_60))
    assert (c.encoding.width, c.encoding.height, c.encoding.fps, c.encoding.video_bitrate) == (1080, 1920, 60, 6000)
    adv = lk.EncodingOptions(width=640, height=360, framerate=25, video_bitrate=800, audio_codec=lkm.OPUS,
                             video_codec=lkm.H264_BASELINE, key_frame_interval=2, audio_frequency=48000)
    c = egress_config("EG_1", "", participant(advanced=adv))
    e = c.encoding
    assert (e.width, e.height, e.fps, e.video_bitrate, e.profile, e.keyframe_interval) == (640, 360, 25, 800, "baseline", 2)
    assert (e.audio_codec, e.audio_frequency) == ("opus", 48000)


@pytest.mark.parametrize("req,message", [
    (participant(identity=""), "request has missing or invalid field: identity"),
    (participant(room_name=""), "request has missing or invalid field: room_name"),
    (participant(file_outputs=[]), "request has missing or invalid field: output"),
    (participant(file_outputs=[mp4(), mp4()]), "request has missing or invalid field: multiple file outputs"),
    (participant(advanced=lk.EncodingOptions(width=641)), "request has missing or invalid field: width"),
    (lk.TrackCompositeEgressRequest(room_name="r", file_outputs=[mp4()]),
     "request has missing or invalid field: audio_track_id or video_track_id"),
    (lk.TrackEgressRequest(room_name="r", file=lk.DirectFileOutput(filepath="x")),
     "request has missing or invalid field: track_id"),
    (lk.TrackEgressRequest(room_name="r", track_id="TR_1"), "request has missing or invalid field: output"),
    (participant(file_outputs=[lk.EncodedFileOutput(file_type=lk.EncodedFileType.OGG)]),
     "format OGG incompatible with codec video"),
    (participant(file_outputs=[], stream_outputs=[lk.StreamOutput(urls=["http://x/y"])]),
     "invalid url http://...: invalid protocol"),
    (participant(file_outputs=[], stream_outputs=[lk.StreamOutput(urls=["rtmp://host-only"])]), "invalid url"),
    (participant(stream_outputs=[lk.StreamOutput(urls=["rtmp://h/live/k"])],
                 advanced=lk.EncodingOptions(audio_codec=lkm.OPUS)), "format RTMP incompatible with codec OPUS"),
    (lk.RoomCompositeEgressRequest(room_name="r", audio_only=True, video_only=True, file_outputs=[mp4()]),
     "request has missing or invalid field: audio_only and video_only"),
    (lk.RoomCompositeEgressRequest(room_name="r", audio_only=True, file_outputs=[mp4()],
                                   image_outputs=[lk.ImageOutput()]),
     "request has missing or invalid field: audio_only images"),
    (lk.RoomCompositeEgressRequest(room_name="r", custom_base_url="ftp://x/", file_outputs=[mp4()]),
     "invalid custom_base_url ftp://...: must be http:// or https://"),
    (lk.WebEgressRequest(file_outputs=[mp4()]), "request has missing or invalid field: url"),
    (lk.WebEgressRequest(url="file:///etc/passwd", file_outputs=[mp4()]),
     "a web egress records an http:// or https:// page"),
    (lk.WebEgressRequest(url="http://x/", audio_only=True, video_only=True, file_outputs=[mp4()]),
     "request has missing or invalid field: audio_only and video_only"),
])
def test_invalid_requests_name_the_problem(req: object, message: str) -> None:
    assert message in error_of(req)


def test_stream_key_never_appears_in_errors() -> None:
    msg = error_of(participant(file_outputs=[], stream_outputs=[lk.StreamOutput(urls=["rtmp://h/sk_verysecret"])]))
    assert "sk_verysecret" not in msg


def test_audio_only_file_types_follow_the_codec() -> None:
    tc = lk.TrackCompositeEgressRequest(room_name="r", audio_track_id="TR_A",
                                        file_outputs=[lk.EncodedFileOutput(filepath="a")])
    c = egress_config("EG_1", "", tc)
    assert (c.file.file_type, c.encoding.audio_codec, c.video_enabled) == ("ogg", "opus", False)  # type: ignore[union-attr]
    tc.advanced.CopyFrom(lk.EncodingOptions(audio_codec=lkm.AAC))
    c = egress_config("EG_1", "", tc)
    assert (c.file.file_type, c.encoding.audio_codec) == ("mp4", "aac")  # type: ignore[union-attr]


def test_keyframe_interval_follows_streams_and_segments() -> None:
    rtmp = lk.StreamOutput(protocol=lk.StreamProtocol.RTMP, urls=["rtmp://h/live/key"])
    c = egress_config("EG_1", "", participant(stream_outputs=[rtmp]))
    assert c.encoding.keyframe_interval == 4.0 and c.stream is not None and c.stream.protocol == "rtmp"
    seg = lk.SegmentedFileOutput(filename_prefix="s", playlist_name="p.m3u8", segment_duration=6)
    c = egress_config("EG_1", "", participant(segment_outputs=[seg]))
    assert c.encoding.keyframe_interval == 6.0 and c.segments.segment_duration == 6  # type: ignore[union-attr]
    c = egress_config("EG_1", "", participant(segment_outputs=[seg], stream_outputs=[rtmp],
                                              advanced=lk.EncodingOptions(key_frame_interval=2)))
    assert c.segments.segment_duration == 2 and c.encoding.keyframe_interval == 2.0  # type: ignore[union-attr]


def test_track_egress_and_room_composite_audio() -> None:
    c = egress_config("EG_1", "", lk.TrackEgressRequest(room_name="r", track_id="TR_1",
                                                        websocket_url="ws://127.0.0.1:9/pcm"))
    assert c.websocket is not None and c.file is None and c.request_type == "track"
    c = egress_config("EG_1", "", lk.RoomCompositeEgressRequest(
        room_name="r", audio_only=True, audio_mixing=lk.DUAL_CHANNEL_AGENT, file_outputs=[mp4()]))
    assert (c.audio_enabled, c.video_enabled, c.audio_mixing, c.file.file_type) == (  # type: ignore[union-attr]
        True, False, "dual_channel_agent", "mp4")
    assert c.encoding.audio_codec == "aac"


def test_v2_media_sources_map_to_the_v1_shapes() -> None:
    s3 = lk.StorageConfig(s3=lk.S3Upload(bucket="b", access_key="k", secret="s"))
    req = lk.StartEgressRequest(
        room_name="r", media=lk.MediaSource(
            participant_video=lk.ParticipantVideo(identity="alice"),
            audio=lk.AudioConfig(routes=[lk.AudioRoute(participant_identity="alice")])),
        preset=lk.H264_1080P_30, storage=s3,
        outputs=[lk.Output(file=lk.FileOutput(filepath="v2.mp4")),
                 lk.Output(stream=lk.StreamOutput(urls=["rtmp://h/live/key"]))])
    c = egress_config("EG_v2", "", req)
    assert (c.request_type, c.identity, c.video_enabled, c.audio_enabled) == ("participant", "alice", True, True)
    assert (c.encoding.width, c.encoding.height) == (1920, 1080) and c.encoding.keyframe_interval == 4.0
    assert c.file is not None and c.file.storage.s3.bucket == "b" and c.stream is not None
    tc = egress_config("EG_v2", "", lk.StartEgressRequest(room_name="r", media=lk.MediaSource(
        video_track_id="TR_v", audio=lk.AudioConfig(routes=[lk.AudioRoute(track_id="TR_a")])),
        outputs=[lk.Output(file=lk.FileOutput(filepath="x"))]))
    assert (tc.request_type, tc.video_track_id, tc.audio_track_id) == ("track_composite", "TR_v", "TR_a")
    mix = egress_config("EG_v2", "", lk.StartEgressRequest(room_name="r", media=lk.MediaSource(
        audio=lk.AudioConfig(capture_all=True)), outputs=[lk.Output(file=lk.FileOutput(filepath="m"))]))
    assert (mix.request_type, mix.video_enabled, mix.file.file_type) == ("room_composite", False, "ogg")  # type: ignore[union-attr]
    web = egress_config("EG_v2", "", lk.StartEgressRequest(web=lk.WebSource(url="https://x", audio_only=True),
                                                           outputs=[lk.Output(file=lk.FileOutput(filepath="w"))]))
    assert (web.request_type, web.engine, web.url, web.video_enabled) == ("web", "chrome", "https://x", False)
    with pytest.raises(InvalidRequest, match="audio routes by channel"):
        egress_config("EG_v2", "", lk.StartEgressRequest(room_name="r", media=lk.MediaSource(audio=lk.AudioConfig(
            routes=[lk.AudioRoute(track_id="a", channel=lk.AudioChannel.AUDIO_CHANNEL_LEFT)]))))


def test_chrome_requests_choose_the_chrome_engine() -> None:
    web = egress_config("EG_w", "", lk.WebEgressRequest(url="https://example.com/", await_start_signal=True,
                                                       file_outputs=[mp4()]))
    assert (web.request_type, web.engine, web.await_start_signal, web.room_name) == ("web", "chrome", True, "")
    custom = egress_config("EG_c", "", lk.RoomCompositeEgressRequest(room_name="r", layout="my-custom",
                                                                     file_outputs=[mp4()]))
    assert (custom.engine, custom.layout, custom.await_start_signal) == ("chrome", "my-custom", True)
    base = egress_config("EG_b", "", lk.RoomCompositeEgressRequest(room_name="r", custom_base_url="https://t/",
                                                                   file_outputs=[mp4()]))
    assert (base.engine, base.layout) == ("chrome", "grid")
    native = egress_config("EG_n", "", lk.RoomCompositeEgressRequest(room_name="r", layout="speaker-light",
                                                                     file_outputs=[mp4()]))
    assert native.engine == "native"
