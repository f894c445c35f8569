"""AV1 over RTP (lkmedia.lkrtc.av1): packets cut the way the RTP payload format allows
(OBUs across packets, several in one, with and without lengths) come back as the temporal
units libdav1d decodes and a muxer stores."""
from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from lkmedia.lkrtc import av1
from lkmedia.lkrtc.frames import FrameAssembler, Unit, depayload


def _tus(n: int) -> list[bytes]:
    ctx = av.CodecContext.create("libsvtav1", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.options = {"preset": "12"}
    out = []
    for i in range(n):
        f = av.VideoFrame(64, 64, "yuv420p")
        for p in f.planes:
            np.frombuffer(p, np.uint8)[:] = (i * 30) % 256
        f.pts = i
        out += [bytes(p) for p in ctx.encode(f)]
    return out + [bytes(p) for p in ctx.encode(None)]


def _obus(tu: bytes) -> list[bytes]:
    """The OBUs of a temporal unit (with size fields), each as RTP carries it: no size
    field, no temporal delimiter."""
    out = []
    for kind, obu in av1.sized_obus(tu):
        n = 2 if obu[0] & 0x04 else 1
        _, start = av1.read_leb128(obu, n)
        if kind != av1.OBU_TEMPORAL_DELIMITER:
            out.append(bytes([obu[0] & ~0x02]) + obu[1:n] + obu[start:])
    return out


def _packets(tu: bytes, mtu: int, first: bool) -> list[bytes]:
    """The first two OBUs (if small) in one packet, with lengths (W=0); every other OBU cut
    into ``mtu``-byte fragments, one element a packet (W=1), Z/Y marking the cuts."""
    obus, out = _obus(tu), []
    n_bit = 0x08 if first else 0
    if len(obus) > 2 and len(obus[0]) + len(obus[1]) < mtu:
        out.append(bytes([n_bit]) + b"".join(av1.leb128(len(o)) + o for o in obus[:2]))
        obus, n_bit = obus[2:], 0
    for o in obus:
        cuts = [o[k:k + mtu] for k in range(0, len(o), mtu)]
        for j, c in enumerate(cuts):
            z = 0x80 if j else 0
            y = 0x40 if j < len(cuts) - 1 else 0
            out.append(bytes([z | y | 0x10 | n_bit]) + c)
            n_bit = 0
    return out


def test_temporal_units_come_back_from_their_packets_and_decode() -> None:
    tus = _tus(5)
    a = FrameAssembler(keyframes=True)
    a.join = av1.temporal_unit
    got, seq = [], 10
    for i, tu in enumerate(tus):
        packets = _packets(tu, 50, i == 0)
        for j, p in enumerate(packets):
            data, start, key, part = depayload("av1", p)
            got += a.push(Unit(seq, 3000 * i, j == len(packets) - 1, start, key, data, 0.0, part))
            seq += 1
    assert [f.data for f in got] == [av1.without_delimiters(tu) for tu in tus]
    assert [f.keyframe for f in got] == [True] + [False] * (len(tus) - 1)
    header = av1.sequence_header(got[0].data)
    assert header is not None and (header[0] >> 3) & 0x0F == av1.OBU_SEQUENCE_HEADER
    dec = av.CodecContext.create("libdav1d", "r")
    frames = [f for d in got for f in dec.decode(av.Packet(d.data))] + list(dec.decode(None))
    assert len(frames) == len(tus) and (frames[0].width, frames[0].height) == (64, 64)


def test_a_continuation_without_its_beginning_is_left_out_and_bad_lengths_raise() -> None:
    obu = bytes([6 << 3, 1, 2, 3])  # an OBU_FRAME, no size field
    whole = bytes([0x10]) + obu
    assert av1.temporal_unit([bytes([0x80 | 0x10]) + b"\x01\x02", whole]) == av1._with_size(obu)
    assert av1.temporal_unit([bytes([0x40 | 0x10]) + obu[:2]]) == b""  # (its end never came)
    with pytest.raises(ValueError):
        av1.temporal_unit([bytes([0x00, 9]) + obu])  # a length past the packet's end
    with pytest.raises(ValueError):
        depayload("av1", b"\x00")
    assert av1.leb128(300) == b"\xac\x02" and av1.read_leb128(b"\xac\x02", 0) == (300, 2)
