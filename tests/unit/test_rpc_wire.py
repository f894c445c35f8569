"""psrpc wire format: channel names (psrpc's own test vectors), envelope bytes, IDs."""
from __future__ import annotations

import re

import pytest
from google.protobuf import any_pb2
from livekit.protocol import egress as lk_egress

from lkmedia.rpc import channels, messages, wire
from lkmedia.rpc.bus import lock_key, parse_address


def test_channel_vectors_from_psrpc() -> None:
    assert channels.response_channel("foo", "bar") == "foo|bar|RES"
    assert channels.claim_request_channel("foo", "bar") == "foo|bar|CLAIM"
    assert channels.stream_channel("foo", "bar") == "foo|bar|STR"
    assert channels.request_channel("foo", "bar") == "foo|bar|REQ"
    assert channels.claim_response_channel("foo", "bar") == "foo|bar|RCLAIM"
    assert channels.request_channel("foo", "bar", ["a", "b", "c"]) == "foo|bar|a|b|c|REQ"
    assert channels.claim_response_channel("foo", "bar", ["a", "b", "c"]) == "foo|bar|a|b|c|RCLAIM"
    assert (
        channels.format_channel(".", "🚀_É", "🛰_bar", ["软件"], "END")
        == "U+0001f680_u+00c9.U+0001f6f0_bar.u+8f6fu+4ef6.END"
    )


def test_livekit_channels() -> None:
    assert channels.request_channel("EgressInternal", "StartEgress", "") == "EgressInternal|StartEgress|REQ"
    assert channels.request_channel("EgressInternal", "StartEgress", [""]) == "EgressInternal|StartEgress|REQ"
    assert channels.claim_response_channel("EgressInternal", "StartEgress", None) == (
        "EgressInternal|StartEgress|RCLAIM"
    )
    assert channels.request_channel("EgressHandler", "StopEgress", "EG_abc123") == "EgressHandler|StopEgress|EG_abc123|REQ"
    assert channels.request_channel("IOInfo", "UpdateEgress") == "IOInfo|UpdateEgress|REQ"
    assert channels.request_channel("EgressInternal", "StartEgress", "my-cluster") == (
        "EgressInternal|StartEgress|myu+002dcluster|REQ"
    )
    assert channels.sanitize("a.b-c d") == "au+002ebu+002dcu+0020d"


def test_empty_topic_parts_follow_go_join() -> None:
    # Go's appendChannelParts: empty parts add nothing, except that an empty *last* element
    # of a non-empty topic list leaves the delimiter it was given (psrpc v0.7.2 behaviour).
    assert channels.request_channel("s", "m", ["", "a"]) == "s|m|a|REQ"
    assert channels.request_channel("s", "m", ["a", ""]) == "s|m|a||REQ"
    assert channels.request_channel("s", "m", []) == "s|m|REQ"


def test_ids() -> None:
    for make, prefix in ((channels.new_client_id, "CLI_"), (channels.new_server_id, "SRV_"),
                         (channels.new_request_id, "REQ_")):
        ids = {make() for _ in range(200)}
        assert len(ids) == 200
        for i in ids:
            assert re.fullmatch(prefix + r"[A-Za-z0-9]{12}", i)
            assert channels.sanitize(i) == i  # never escaped in channel names


def test_envelope_bytes_and_type_url() -> None:
    req = wire.Request(request_id="REQ_x", client_id="CLI_y", sent_at=1, expiry=2, raw_request=b"\x0a\x01z")
    payload = wire.encode(req)
    env = wire.Msg.FromString(payload)
    assert env.type_url == "type.googleapis.com/internal.Request"
    assert env.channel == ""
    # fields 1-2 are google.protobuf.Any: Go's anypb parses the same bytes
    anyv = any_pb2.Any.FromString(payload)
    assert anyv.type_url == "type.googleapis.com/internal.Request"
    assert anyv.value == req.SerializeToString()
    # exact bytes: tag 1 (type_url), tag 2 (value)
    inner = req.SerializeToString()
    tu = b"type.googleapis.com/internal.Request"
    assert payload == b"\x0a" + bytes([len(tu)]) + tu + b"\x12" + bytes([len(inner)]) + inner
    assert wire.decode(payload) == req
    for cls, name in ((wire.Response, "Response"), (wire.ClaimRequest, "ClaimRequest"),
                      (wire.ClaimResponse, "ClaimResponse"), (wire.Stream, "Stream")):
        assert wire.Msg.FromString(wire.encode(cls())).type_url == f"type.googleapis.com/internal.{name}"


def test_inner_field_numbers() -> None:
    # raw_request is field 8, raw_response field 7, affinity a 32-bit float (field 3)
    assert wire.Request(raw_request=b"A").SerializeToString() == b"\x42\x01A"
    assert wire.Response(raw_response=b"A").SerializeToString() == b"\x3a\x01A"
    assert wire.Response(error="e", code="c").SerializeToString() == b"\x2a\x01e\x32\x01c"
    assert wire.ClaimRequest(affinity=0.5).SerializeToString() == b"\x1d\x00\x00\x00\x3f"
    assert wire.Request(metadata={"k": "v"}).SerializeToString() == b"\x3a\x06\x0a\x01k\x12\x01v"


def test_decode_unknown_and_wrong_types() -> None:
    other = wire.Msg(type_url="type.googleapis.com/other.Thing", value=b"x").SerializeToString()
    assert wire.decode(other) is None
    with pytest.raises(TypeError):
        wire.encode(wire.Msg())
    with pytest.raises(wire.DecodeError):
        wire.decode(b"\xff\xff")


def test_errors() -> None:
    assert wire.no_response().code == "unavailable"
    assert wire.no_response().message == "no response from servers"
    assert wire.timed_out().code == "deadline_exceeded"
    assert wire.timed_out().message == "request timed out"
    with pytest.raises(ValueError, match="unknown psrpc error code"):
        wire.RpcError("nope", "x")
    assert wire.RpcError.from_response("weird", "x").code == "unknown"


def test_start_egress_request_is_wire_identical_to_nested_messages() -> None:
    track = lk_egress.TrackEgressRequest(room_name="r", track_id="TR_1", websocket_url="ws://x")
    req = messages.pack_start_egress(track, egress_id="EG_1", room_id="RM_1")
    kind, inner = messages.unpack_start_egress(req)
    assert kind == "track" and inner == track
    # field 7 (track), length-delimited, with the TrackEgressRequest bytes: as Go marshals it
    assert b"\x3a" + bytes([len(track.SerializeToString())]) + track.SerializeToString() in req.SerializeToString()
    empty = messages.pack_start_egress(lk_egress.ParticipantEgressRequest(), egress_id="EG_2")
    assert messages.unpack_start_egress(messages.StartEgressRequest.FromString(empty.SerializeToString()))[0] == (
        "participant"
    )
    with pytest.raises(wire.RpcError, match="no request"):
        messages.unpack_start_egress(messages.StartEgressRequest(egress_id="EG_3"))


def test_lock_key_and_address() -> None:
    assert lock_key(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    assert parse_address("127.0.0.1:6380") == ("127.0.0.1", 6380)
    assert parse_address("redis") == ("redis", 6379)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError, match="not host:port"):
        parse_address("host:abc")


def test_no_descriptor_pool_clash_with_livekit_protocol() -> None:
    import livekit.api  # noqa: F401  (loads every livekit-protocol module)
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    assert pool.FindMessageTypeByName("internal.Request").file.name == "lkmedia/rpc/protos/psrpc_internal.proto"
    assert pool.FindMessageTypeByName("lkmedia.rpc.StartEgressRequest")
    assert pool.FindMessageTypeByName("livekit.EgressInfo").file.name == "livekit_egress.proto"
