"""The subscriber's answer to livekit-server's offer accepts VP9 and AV1, which aiortc
(whose codec list is global, and shared with the publishers it also runs) does not know;
AV1 keeps the payload type livekit-server gives it (35), outside the range aiortc keeps."""
from __future__ import annotations

from aiortc import RTCPeerConnection, RTCSessionDescription

from lkmedia.lkrtc.subscriber import _as_vp8, _restore_codecs

FINGERPRINT = ":".join(["AB"] * 32)
OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0", "a=msid-semantic:WMS *",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 35 36", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx", f"a=fingerprint:sha-256 {FINGERPRINT}",
    "a=setup:actpass", "a=mid:0", "a=sendonly", "a=rtcp-mux",
    "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
    "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96",
    "a=rtpmap:98 VP9/90000", "a=rtcp-fb:98 nack", "a=rtcp-fb:98 nack pli", "a=fmtp:98 profile-id=0",
    "a=rtpmap:99 rtx/90000", "a=fmtp:99 apt=98",
    "a=rtpmap:35 AV1/90000", "a=rtcp-fb:35 nack", "a=rtcp-fb:35 nack pli", "a=rtpmap:36 rtx/90000", "a=fmtp:36 apt=35",
    "a=ssrc-group:FID 1111 2222", "a=ssrc:1111 cname:x", "a=ssrc:2222 cname:x", ""])


async def test_the_answer_accepts_vp9_and_av1_by_their_names_parameters_and_payload_types() -> None:
    pc = RTCPeerConnection()
    try:
        sdp, renamed = _as_vp8(OFFER)
        assert "VP9" not in sdp and "AV1" not in sdp and sorted(renamed.codecs) == [35, 98]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        _restore_codecs(pc, renamed)
        answer = (await pc.createAnswer()).sdp.splitlines()
    finally:
        await pc.close()
    for line in ("a=rtpmap:96 VP8/90000", "a=rtpmap:98 VP9/90000", "a=fmtp:98 profile-id=0", "a=rtcp-fb:98 nack pli",
                 "a=fmtp:99 apt=98", "a=rtpmap:35 AV1/90000", "a=rtcp-fb:35 nack pli", "a=fmtp:36 apt=35"):
        assert line in answer, answer
    [m] = [ln for ln in answer if ln.startswith("m=video")]
    assert m.split()[3:] == ["96", "97", "98", "99", "35", "36"], m
    [codecs] = [tr._codecs for tr in pc.getTransceivers()]
    assert {c.payloadType: c.mimeType for c in codecs} == {96: "video/VP8", 97: "video/rtx", 98: "video/VP9",
                                                            99: "video/rtx", 35: "video/AV1", 36: "video/rtx"}


def test_an_offer_without_vp9_is_left_as_it_is() -> None:
    plain = OFFER.replace("VP9", "H264").replace("AV1", "H264")
    sdp, renamed = _as_vp8(plain)
    assert sdp == plain and not renamed.codecs
