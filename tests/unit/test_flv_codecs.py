"""lkmedia.rtmp.flv_codecs: which FLV / Enhanced RTMP codecs a publish may carry, and the
words a refused one is named in."""
from __future__ import annotations

import pytest

from lkmedia.rtmp.flv import AUDIO, SCRIPT, VIDEO, FlvTag
from lkmedia.rtmp.flv_codecs import FlvCodecCheck, refusal


@pytest.mark.parametrize("first", [b"\x17\x00", b"\x22", b"\x24", b"\x13", b"\x90hvc1", b"\x90av01", b"\x96xxxx"])
def test_decodable_video_is_taken(first: bytes) -> None:
    assert refusal(FlvTag(VIDEO, 0, first)) == ""  # (the last: Enhanced RTMP multitrack, left to FFmpeg)


@pytest.mark.parametrize("first", [b"\xaf\x00", b"\x2f", b"\x6f", b"\x7e", b"\xb6", b"\x90Opus", b"\x90fLaC"])
def test_decodable_audio_is_taken(first: bytes) -> None:
    assert refusal(FlvTag(AUDIO, 0, first)) == ""


@pytest.mark.parametrize(("tag", "words"), [
    (FlvTag(VIDEO, 0, b"\x11"), "unsupported video codec: JPEG (FLV video codec ID 1); publish H.264 video"),
    (FlvTag(VIDEO, 0, b"\x1f"), "unsupported video codec: unknown (FLV video codec ID 15)"),
    (FlvTag(VIDEO, 0, b"\x90xyz1"), "unsupported video codec: unknown (Enhanced RTMP FourCC 'xyz1')"),
    (FlvTag(AUDIO, 0, b"\xf0"), "unsupported audio codec: device-specific sound (FLV audio codec ID 15); "
                                "publish AAC audio"),
    (FlvTag(AUDIO, 0, b"\x90abcd"), "unsupported audio codec: unknown (Enhanced RTMP FourCC 'abcd')"),
])
def test_undecodable_codecs_are_named(tag: FlvTag, words: str) -> None:
    assert refusal(tag).startswith(words), refusal(tag)


def test_the_check_looks_at_the_first_tag_of_each_kind_only() -> None:
    check = FlvCodecCheck()
    assert check(FlvTag(SCRIPT, 0, b"\x02\x00\x0aonMetaData")) == ""
    assert check(FlvTag(VIDEO, 0, b"\x17\x00")) == ""
    assert check(FlvTag(VIDEO, 40, b"\x11")) == ""  # a codec change mid-stream is left to the decoder
    assert "audio codec" in check(FlvTag(AUDIO, 0, b"\xf0"))
    assert check(FlvTag(AUDIO, 20, b"\xf0")) == ""  # refused once
