"""lkmedia.lkrtc without a server: RTP clocks and sender reports, frame assembly
(order, loss, key frames, padding), payload parsing, and packets a muxer takes."""
from __future__ import annotations

import fractions
import struct
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from lkmedia.lkrtc.clock import ParticipantClock, StreamClock, unwrap
from lkmedia.lkrtc.frames import EncodedFrame, FrameAssembler, Unit, depayload, is_blank, vp8_size
from lkmedia.lkrtc.packets import Packetizer, h264_parameter_sets, opus_samples
from lkmedia.lkrtc.signal import candidate_init, join_url
from lkmedia.probe import decode_errors

NTP = 1 << 32


def ntp(seconds: float) -> int:
    return round(seconds * NTP)


# -- clock -------------------------------------------------------------------------------
def test_unwrap_crosses_the_32_bit_edge() -> None:
    assert unwrap(10, None) == 10
    assert unwrap(5, 0xFFFFFFF0) == (1 << 32) + 5
    assert unwrap(0xFFFFFFF0, (1 << 32) + 5) == 0xFFFFFFF0
    assert unwrap(3, 0xFFFE, 16) == 0x10003 and unwrap(0xFFFE, 0x10003, 16) == 0xFFFE


def test_stream_clock_keeps_rtp_spacing_from_first_arrival() -> None:
    c = StreamClock(48_000)
    assert c.time(1000, 50.0) == 50.0
    # arrival jitter does not move a frame: 960 samples later is 20 ms later
    assert c.time(1960, 50.035) == pytest.approx(50.02)
    # across the wrap of the 32-bit timestamp
    c2 = StreamClock(90_000)
    c2.time(0xFFFFFF00, 10.0)
    assert c2.time(0x100, 10.01) == pytest.approx(10.0 + 0x200 / 90_000)


def test_sender_reports_put_two_tracks_on_one_clock() -> None:
    """A publisher captures audio and video on one NTP clock. Video's first frame arrives
    later (encoder delay), so arrival alone dates it 100 ms late; once both tracks have a
    sender report, a moment of capture has one local time in both."""
    p = ParticipantClock()
    audio, video = p.stream(48_000), p.stream(90_000)
    a0, v0, t_ntp0 = 123_456, 987_654, 3_900_000_000.0     # RTP and NTP at capture time 0

    def a_ts(x: float) -> int:
        return (a0 + round(x * 48_000)) & 0xFFFFFFFF

    def v_ts(x: float) -> int:
        return (v0 + round(x * 90_000)) & 0xFFFFFFFF

    audio.time(a_ts(0.0), 100.05)          # 50 ms network delay
    video.time(v_ts(0.1), 100.25)          # captured at 0.1, arrived 150 ms later
    off = video.time(v_ts(1.0), 101.2) - audio.time(a_ts(1.0), 101.1)
    assert off == pytest.approx(0.1)       # arrival only: video 100 ms late
    audio.sender_report(ntp(t_ntp0 + 1.0), a_ts(1.0))
    assert audio.synced and p.offset is not None
    assert audio.time(a_ts(1.02), 101.1) == pytest.approx(101.07)  # the first report does not move it
    video.sender_report(ntp(t_ntp0 + 1.0), v_ts(1.0))
    for x in (1.5, 2.0, 7.3):
        assert video.time(v_ts(x), 100 + x) - audio.time(a_ts(x), 100 + x) == pytest.approx(0.0, abs=1e-4)
    assert video.shifts == 1 and video.last_shift == pytest.approx(-0.1, abs=1e-4)
    # later reports that agree (within resync) do not move anything
    video.sender_report(ntp(t_ntp0 + 4.0 + 0.01), v_ts(4.0))
    assert video.shifts == 1
    # a report far off (the sender's clock stepped) moves the track again
    video.sender_report(ntp(t_ntp0 + 5.0 + 0.2), v_ts(5.0))
    assert video.shifts == 2


def test_a_late_first_report_is_corrected_by_an_earlier_one() -> None:
    """A report can come out late (its sender dated it when a packet left), never early:
    a participant's track follows the earliest of its recent reports, so a first report
    12 ms late puts the audio 12 ms late only until a punctual one comes; a later late one
    does not move it back. A lone track is not moved for so little."""
    p = ParticipantClock()
    audio, video = p.stream(48_000), p.stream(90_000)
    audio.time(0, 100.0)
    video.time(0, 100.0)
    video.sender_report(ntp(1000.0), 0)                    # capture 0 was at NTP 1000.0
    audio.sender_report(ntp(1000.0 + 0.012), 0)            # ... says 12 ms later: late
    assert audio.time(48_000, 101.0) - video.time(90_000, 101.0) == pytest.approx(0.012)
    audio.sender_report(ntp(1003.0), 3 * 48_000)           # punctual
    assert audio.time(4 * 48_000, 104.0) - video.time(4 * 90_000, 104.0) == pytest.approx(0.0, abs=1e-6)
    audio.sender_report(ntp(1006.0 + 0.009), 6 * 48_000)   # late again: the earliest still holds
    assert audio.time(7 * 48_000, 107.0) - video.time(7 * 90_000, 107.0) == pytest.approx(0.0, abs=1e-6)
    assert audio.shifts == 2
    lone = StreamClock(48_000)
    lone.time(0, 100.0)
    lone.sender_report(ntp(1000.0 + 0.012), 0)
    lone.sender_report(ntp(1003.0), 3 * 48_000)
    assert lone.shifts == 0


def test_a_timestamp_jump_restarts_from_arrival() -> None:
    c = StreamClock(48_000, max_skew=2.0)
    c.time(0, 10.0)
    t = c.time(48_000 * 3600, 10.5)      # an hour ahead of where arrival says we are
    assert t == pytest.approx(10.5)


# -- frames ------------------------------------------------------------------------------
def u(seq: int, ts: int, *, marker: bool = False, start: bool = False, key: bool = False,
      t: float = 0.0, data: bytes = b"x") -> Unit:
    return Unit(seq, ts, marker, start, key, data, t)


def test_assembler_reorders_and_joins_packets() -> None:
    a = FrameAssembler(keyframes=True)
    assert a.push(u(10, 1, start=True, key=True, data=b"a")) == []
    assert a.push(u(12, 1, marker=True, data=b"c")) == []
    assert a.stalled                       # 11 is missing while 12 is here
    [f] = a.push(u(11, 1, data=b"b"))
    assert not a.stalled
    assert (f.data, f.keyframe, f.timestamp) == (b"abc", True, 1)
    [g] = a.push(u(13, 2, start=True, marker=True, data=b"d"))
    assert not g.keyframe and g.data == b"d"


def test_assembler_gives_up_a_hole_and_waits_for_a_key_frame() -> None:
    a = FrameAssembler(keyframes=True, max_wait=0.3)
    a.push(u(1, 1, start=True, key=True, marker=True))
    assert a.push(u(3, 3, start=True, marker=True, t=0.1)) == []   # 2 lost
    assert a.stalled
    assert a.expire(0.2) == []                                     # NACK's time
    assert a.push(u(4, 4, start=True, marker=True, t=0.3)) == []
    assert a.expire(0.45) == []                                    # given up: 3, 4 need 2
    assert (a.lost_packets, a.dropped_frames, a.need_key) == (1, 2, True)
    [k] = a.push(u(5, 5, start=True, key=True, marker=True, t=0.5))
    assert k.keyframe and k.lost_before == 1 and not a.need_key


def test_assembler_repaired_in_time_loses_nothing() -> None:
    a = FrameAssembler(keyframes=True, max_wait=0.3)
    a.push(u(1, 1, start=True, key=True, marker=True))
    a.push(u(3, 3, start=True, marker=True, t=0.1))
    out = a.push(u(2, 2, start=True, marker=True, t=0.25))         # the retransmission
    assert [f.timestamp for f in out] == [2, 3] and a.lost_packets == 0


def test_assembler_waits_for_a_late_first_packet() -> None:
    """The stream's very first packet is lost and resent: the first frame is still whole."""
    a = FrameAssembler(keyframes=True, max_wait=0.3)
    assert a.push(u(11, 1, marker=True, t=0.0)) == []      # 10 (the key frame's start) is late
    assert a.stalled
    [k] = a.push(u(10, 1, start=True, key=True, t=0.05))
    assert k.keyframe and a.dropped_frames == 0
    b = FrameAssembler(keyframes=True, max_wait=0.3)       # and if it never comes:
    b.push(u(11, 1, marker=True, t=0.0))
    assert b.expire(0.4) == [] and b.dropped_frames == 1 and b.need_key


def test_assembler_skips_padding_and_ends_frames_without_marker() -> None:
    a = FrameAssembler(keyframes=True)
    a.push(u(1, 1, start=True, key=True, marker=True))
    assert a.push(u(2, 1, data=b"")) == []                         # padding
    assert a.push(u(3, 2, start=True)) == []
    [f] = a.push(u(4, 3, start=True))                              # frame 2 had no marker
    assert f.timestamp == 2 and a.lost_packets == 0


def test_assembler_audio_every_packet_a_frame() -> None:
    a = FrameAssembler(every_packet=True, max_wait=0.1)
    a.push(u(1, 960, start=True, key=True))
    assert a.push(u(3, 2880, start=True, key=True, t=0.0)) == []
    [f2, f3] = a.push(u(2, 1920, start=True, key=True, t=0.01))
    assert (f2.timestamp, f3.timestamp) == (1920, 2880)
    assert a.push(u(5, 4800, start=True, key=True, t=0.02)) == []
    [f5] = a.expire(0.2)
    assert f5.lost_before == 1 and a.lost_packets == 1


def test_depayload_key_frames() -> None:
    # VP8: descriptor with S=1, PID=0; a key frame's first byte has P=0
    key = bytes([0x10]) + bytes.fromhex("9000009d012a4001f000")
    data, start, is_key, _ = depayload("vp8", key)
    assert start and is_key and vp8_size(data) == (320, 240)
    data, start, is_key, _ = depayload("vp8", bytes([0x00, 0x91]))  # continuation, not a start
    assert not start and not is_key
    # H.264: a single IDR NAL, a STAP-A holding an SPS, an FU-A starting an IDR
    assert depayload("h264", bytes([0x65, 0x88]))[2]
    stap = bytes([0x18]) + struct.pack("!H", 3) + bytes([0x67, 1, 2]) + struct.pack("!H", 2) + bytes([0x68, 1])
    data, start, is_key, _ = depayload("h264", stap)
    assert start and is_key and data == b"\x00\x00\x00\x01\x67\x01\x02\x00\x00\x00\x01\x68\x01"
    assert h264_parameter_sets(data) == data
    assert depayload("h264", bytes([0x7C, 0x85, 0xAA]))[1:] == (True, True, False)
    assert depayload("h264", bytes([0x7C, 0x05, 0xAA]))[1:] == (False, False, False)
    assert depayload("opus", b"\xf8\x01") == (b"\xf8\x01", True, True, False)


# RFC 9628's descriptor: I P L F B E V Z, then what those bits say is there
VI, VP, VL, VF, VB, VE, VV = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02


def test_vp9_descriptor_what_starts_a_picture_and_a_key_picture() -> None:
    # non-flexible (libwebrtc): 15-bit picture id, TID/U/SID/D + TL0PICIDX, and on the key
    # picture a scalability structure: 3 layers with sizes, a group of 2 pictures (1 and 0 refs)
    ss = bytes([0b010_1_1_000]) + bytes(12) + bytes([2, 0b000_1_01_00, 1, 0b001_0_00_00])
    key = bytes([VI | VL | VB | VV, 0x80 | 0x12, 0x34, 0 << 1, 7]) + ss + b"KEY"
    assert depayload("vp9", key) == (b"KEY", True, True, True)
    # the same picture's second spatial layer (SID 1, D): a layer frame's start, not a key
    # picture's (alone, as livekit-server forwards the top layer of a predicted picture)
    layer1 = bytes([VI | VL | VB, 0x80 | 0x12, 0x34, 1 << 1 | 1, 7]) + b"S1"
    assert depayload("vp9", layer1) == (b"S1", True, False, True)
    # a predicted picture, a continuation packet, and one with no optional fields at all
    assert depayload("vp9", bytes([VI | VP | VL | VB, 0x05, 0, 8]) + b"d") == (b"d", True, False, True)
    assert depayload("vp9", bytes([VI | VP | VL | VE, 0x05, 0, 8]) + b"e") == (b"e", False, False, False)
    assert depayload("vp9", bytes([VB | VE]) + b"f") == (b"f", True, True, True)
    # flexible mode: the layer byte without TL0PICIDX, two reference indices (N set on the first)
    flex = bytes([VI | VP | VL | VF | VB, 0x09, 0 << 1, 0x03, 0x04]) + b"g"
    assert depayload("vp9", flex) == (b"g", True, False, True)
    for bad in (b"", bytes([VI]), bytes([VL]), bytes([VF | VP]), bytes([VV]), bytes([VV, 0x10]) + bytes(3),
                bytes([VV, 0x08]), bytes([VF | VP, 0x01])):
        with pytest.raises(ValueError):
            depayload("vp9", bad)


def _vp9_frames(n: int, size: tuple[int, int] = (64, 48)) -> list[bytes]:
    ctx = av.CodecContext.create("libvpx-vp9", "w")
    ctx.width, ctx.height, ctx.pix_fmt = *size, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "auto-alt-ref": "0"}
    out = []
    for i in range(n):
        f = av.VideoFrame(*size, "yuv420p")
        for p in f.planes:
            np.frombuffer(p, np.uint8)[:] = (i * 40) % 256
        f.pts = i
        out += [bytes(p) for p in ctx.encode(f)]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


def test_vp9_spatial_layers_become_one_superframe_ffmpeg_decodes() -> None:
    from lkmedia.lkrtc.frames import vp9_superframe

    base, top = _vp9_frames(1, (64, 48))[0], _vp9_frames(1, (128, 96))[0] + bytes(300)  # (2-byte sizes)
    a = FrameAssembler(keyframes=True)
    units = [Unit(1, 90, False, True, True, base[:10], 0.0), Unit(2, 90, False, False, False, base[10:], 0.0),
             Unit(3, 90, False, False, False, top[:5], 0.0, True), Unit(4, 90, True, False, False, top[5:], 0.0)]
    [frame] = [f for x in units for f in a.push(x)]
    assert frame.keyframe and frame.data == vp9_superframe([base, top])
    ctx = av.CodecContext.create("vp9", "r")  # (FFmpeg's decoder splits a superframe by its index)
    assert [(d.width, d.height) for d in [*ctx.decode(av.Packet(frame.data)), *ctx.decode(None)]] == [
        (64, 48), (128, 96)]
    assert vp9_superframe([base]) == base
    with pytest.raises(ValueError):
        vp9_superframe([base] * 9)


def test_vp9_frames_in_packets_come_out_whole_and_decode() -> None:
    """libvpx's frames cut into RTP payloads with a descriptor, reassembled and decoded."""
    frames = _vp9_frames(6)
    a = FrameAssembler(keyframes=True)
    got, seq = [], 100
    for i, fr in enumerate(frames):
        chunks = [fr[k:k + 40] for k in range(0, len(fr), 40)]
        for j, c in enumerate(chunks):
            b0 = VI | VL | (VP if i else 0) | (VB if j == 0 else 0) | (VE if j == len(chunks) - 1 else 0)
            data, start, key, part = depayload("vp9", bytes([b0, i, 0, 0]) + c)
            got += a.push(Unit(seq, 3000 * i, j == len(chunks) - 1, start, key, data, 0.0, part))
            seq += 1
    assert [f.data for f in got] == frames and [f.keyframe for f in got] == [True] + [False] * 5
    ctx = av.CodecContext.create("vp9", "r")
    decoded = [d for f in got for d in ctx.decode(av.Packet(f.data))]
    assert len(decoded) == 6 and (decoded[0].width, decoded[0].height) == (64, 48)


def test_server_blank_frames_are_recognised() -> None:
    assert is_blank("opus", bytes.fromhex("f8fffe") + bytes(77))
    assert not is_blank("opus", bytes.fromhex("f8fffe"))
    assert is_blank("vp8", bytes.fromhex("1002009d012a0800080000470885858885848802") +
                    bytes.fromhex("02000c0d6000feffab5080"))
    assert vp8_size(bytes.fromhex("1002009d012a08000800")) == (8, 8)


# -- packets -----------------------------------------------------------------------------
def test_opus_samples_from_the_toc() -> None:
    assert opus_samples(bytes([0xF8])) == 960                      # CELT FB 20 ms, one frame
    assert opus_samples(bytes([0x78])) == 960                      # hybrid FB 20 ms
    assert opus_samples(bytes([0x09])) == 1920                     # SILK NB 20 ms, code 1: two frames
    assert opus_samples(bytes([0xF3, 0x03])) == 3 * 480            # CELT FB 10 ms, code 3: three
    assert opus_samples(bytes([0xE3, 0x03])) == 3 * 120            # CELT FB 2.5 ms, code 3: three
    assert opus_samples(b"") == 0


def _opus_packets(n: int) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format = 48_000, "mono", "s16"  # type: ignore[attr-defined]
    enc.time_base = fractions.Fraction(1, 48_000)
    out: list[bytes] = []
    for i in range(n):
        s = np.arange(i * 960, (i + 1) * 960)
        frame = av.AudioFrame.from_ndarray((np.sin(s * 2 * np.pi * 440 / 48_000) * 8000).astype(np.int16)[None, :],
                                           format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, i * 960
        out += [bytes(p) for p in enc.encode(frame)]  # type: ignore[attr-defined]
    return out


def _write_ogg(path: Path, pz: Packetizer, packets: list[av.Packet]) -> Path:
    """The packets muxed as a file sink would: into a stream made from their template."""
    with av.open(str(path), "w") as c:
        assert pz.template is not None
        s = c.add_stream_from_template(pz.template.stream)
        for p in packets:
            p.stream = s
            c.mux(p)
    return path


def _packetize(n: int, missing: range, moved: Callable[[int], float], offset: float) -> tuple[Packetizer, list[av.Packet]]:
    """``n`` Opus packets 20 ms apart from local time 10 s, less ``missing``, packet i's time
    moved by ``moved(i)``, through one Packetizer."""
    pz = Packetizer("audio", "opus")
    out: list[av.Packet] = []
    for i, data in enumerate(_opus_packets(n)):
        if i not in missing:
            out += pz(EncodedFrame(data, i * 960, True, 0.0, 0, 10.0 + i * 0.02 + moved(i)), offset)
    return pz, out


def test_packetizer_fills_holes_and_the_ogg_decodes_clean(tmp_path: Path) -> None:
    # 200 ms never arrived; times jittered by 4 ms snap to continuity
    pz, out = _packetize(100, range(40, 50), lambda i: 0.004 if i % 3 else 0.0, 9.5)
    assert pz.filled == 10 and pz.filled_seconds == pytest.approx(0.2)
    assert [p.pts for p in out] == [round(0.5 * 48_000) + 960 * i for i in range(100)]
    path = _write_ogg(tmp_path / "fill.ogg", pz, out)
    assert decode_errors(str(path)) == ""
    with av.open(str(path)) as c:
        assert sum(f.samples for f in c.decode(audio=0)) == 100 * 960


def test_a_packet_after_a_filled_hole_keeps_its_time_to_the_nearest_frame() -> None:
    """A packet after a hole (DTX silence, lost packets) whose time moved a little (the
    clock followed a sender report 1.2 ms back) goes on the 20 ms frame nearest its time:
    filling whole frames up to below it put it (and every later one) 20 ms early."""
    pz, out = _packetize(40, range(5, 35), lambda i: -0.0012 if i >= 35 else 0.0, 10.0)  # 600 ms of DTX
    assert [p.pts for p in out] == [960 * i for i in range(40)]
    assert pz.filled == 30


def test_packetizer_silence_before_and_between_packets_decodes_to_zeros(tmp_path: Path) -> None:
    """A publisher that sends nothing is written as Opus silence; its packets continue
    after the silence, and the silence decodes to digital zeros."""
    packets = _opus_packets(50)
    pz = Packetizer("audio", "opus")
    out = pz.silence(2.0, 3.0)                                    # 1 s of nothing since subscribing
    assert len(out) == 50 and pz.silent_seconds == pytest.approx(1.0) and pz.template is not None
    assert out[0].pts == 2 * 48_000 and out[-1].pts + 960 == 3 * 48_000
    assert pz.silence(2.0, 3.01) == []                            # less than a frame more: nothing yet
    for i, data in enumerate(packets):                           # then it speaks, 2 ms after
        out += pz(EncodedFrame(data, i * 960, True, 0.0, 0, 13.002 + i * 0.02), 10.0)
    assert pz.silence(2.0, 4.01) == []                            # covered already (it spoke to 4.0)
    assert [p.pts for p in out] == [2 * 48_000 + 960 * i for i in range(100)]
    path = _write_ogg(tmp_path / "silence.ogg", pz, out)
    assert decode_errors(str(path)) == ""
    with av.open(str(path)) as c:
        pcm = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    assert len(pcm) == 100 * 960
    assert np.abs(pcm[:48_000]).max() == 0 and np.abs(pcm[48_000 + 960:]).max() > 0.05


def test_packetizer_video_times_only_grow() -> None:
    pz = Packetizer("video", "vp8")
    key = bytes.fromhex("9000009d012a4001f000") + bytes(20)
    a = pz(EncodedFrame(key, 0, True, 0.0, 0, 1.0), 0.0)[0]
    b = pz(EncodedFrame(b"\x01", 3000, False, 0.0, 0, 1.0003), 0.0)[0]   # 0.3 ms later
    assert (a.pts, b.pts) == (90_000, 90_090) and a.is_keyframe and not b.is_keyframe
    assert pz.template is not None and pz.template.stream.codec_context.width == 320


def test_an_undecodable_first_h264_frame_is_dropped_and_a_key_frame_asked_for() -> None:
    """A track's first frame must give the stream its picture size: one that does not
    decode alone (a key frame that lost a packet, a frame that is not one) is dropped and
    a key frame is asked for. It raised, and so did every frame after it (each retried the
    template) until the publisher happened to send a key frame: seconds of video lost."""
    from lkmedia.lkrtc.frames import _BLANK
    pz = Packetizer("video", "h264")
    broken = _BLANK["h264"].rsplit(b"\x00\x00\x00\x01", 1)[0]      # its IDR slice lost
    assert pz(EncodedFrame(broken, 0, True, 0.0, 0, 1.0), 0.0) == []
    assert pz.need_key and pz.dropped == 1 and pz.template is None
    idr_alone = b"\x00\x00\x00\x01" + _BLANK["h264"].rsplit(b"\x00\x00\x00\x01", 1)[1]  # no SPS, PPS
    assert pz(EncodedFrame(idr_alone, 1500, True, 0.0, 0, 1.02), 0.0) == []
    assert pz(EncodedFrame(b"\x00\x00\x00\x01\x41\x9a", 3000, False, 0.0, 0, 1.03), 0.0) == []
    (p,) = pz(EncodedFrame(_BLANK["h264"], 6000, True, 0.0, 0, 1.07), 0.0)
    assert p.is_keyframe and not pz.need_key and pz.dropped == 3
    assert pz.template is not None and pz.template.stream.codec_context.width == 2


def test_join_url_and_candidates() -> None:
    url = join_url("https://lk.example.com/prefix/", auto_subscribe=False)
    assert url.startswith("wss://lk.example.com/prefix/rtc?auto_subscribe=0")
    assert "protocol=16" in url and "sdk=python" in url and "token" not in url
    assert join_url("ws://h:7880").startswith("ws://h:7880/rtc?")
    with pytest.raises(ValueError):
        join_url("ftp://h")
    assert candidate_init("1 1 udp 1 1.2.3.4 5 typ host", "0", 0) == (
        '{"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}')


def test_parse_rtp_reads_what_aiortc_writes() -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap, RtpPacket

    from lkmedia.lkrtc.fastpath import parse_rtp, unwrap_rtx

    ext = HeaderExtensionsMap()
    ext.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=4, uri="urn:ietf:params:rtp-hdrext:sdes:mid")]))
    p = RtpPacket(payload_type=96, marker=1, sequence_number=65535, timestamp=0xFFFFFFF0, ssrc=0x12345678,
                  payload=b"\x90\x80\x00payload")
    p.csrc = [1, 2]
    p.extensions.mid = "3"
    p.padding_size = 7
    data = p.serialize(ext)
    q = parse_rtp(data)
    assert (q.marker, q.payload_type, q.sequence_number, q.timestamp, q.ssrc, q.payload) == (
        1, 96, 65535, 0xFFFFFFF0, 0x12345678, b"\x90\x80\x00payload")
    plain = parse_rtp(RtpPacket(payload_type=111, sequence_number=5, timestamp=960, ssrc=7,
                                payload=b"\x12\x34opus").serialize())
    assert (plain.marker, plain.payload, plain.sequence_number) == (0, b"\x12\x34opus", 5)
    media = unwrap_rtx(plain, payload_type=96, ssrc=9)
    assert (media.sequence_number, media.payload_type, media.ssrc, media.payload) == (0x1234, 96, 9, b"opus")
    for bad in (data[:11], b"\x40" + data[1:], data[:14]):
        with pytest.raises(ValueError):
            parse_rtp(bad)


def test_vp8_payload_reads_what_aiortcs_descriptor_parser_reads() -> None:
    import random

    from aiortc.codecs.vpx import VpxPayloadDescriptor

    from lkmedia.lkrtc.frames import vp8_payload

    rng = random.Random(7)
    checked = 0
    for _ in range(20000):
        payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 7)))
        try:
            desc, data = VpxPayloadDescriptor.parse(payload)
        except ValueError:
            with pytest.raises(ValueError):
                vp8_payload(payload)
            continue
        start = bool(desc.partition_start) and desc.partition_id == 0
        assert vp8_payload(payload) == (data, start), payload.hex()
        checked += 1
    assert checked > 10000
