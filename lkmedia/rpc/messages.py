"""The rpc/* messages livekit-server exchanges with egress and ingress.

Generated from lkmedia/rpc/protos/*.proto (scripts/gen_protos.sh). Fields holding a
``livekit.*`` message are ``bytes`` there (same wire format); the helpers here pack
and unpack them with the livekit-protocol classes.
"""
from __future__ import annotations

from google.protobuf.message import DecodeError, Message
from livekit.protocol import egress as lk_egress
from livekit.protocol import ingress as lk_ingress

from .protos.egress_pb2 import (
    EgressReadyRequest,
    EgressReadyResponse,
    GetEgressRequest,
    ListActiveEgressRequest,
    ListActiveEgressResponse,
    StartEgressRequest,
    UpdateMetricsRequest,
)
from .protos.ingress_pb2 import (
    DeleteWHIPResourceRequest,
    GetIngressInfoRequest,
    GetIngressInfoResponse,
    ICERestartWHIPResourceRequest,
    ICERestartWHIPResourceResponse,
    IngressSession,
    ListActiveIngressRequest,
    ListActiveIngressResponse,
    StartIngressRequest,
    UpdateIngressStateRequest,
    WHIPRTCConnectionNotifyRequest,
)
from .wire import RpcError

#: rpc.StartEgressRequest oneof ``request``: field name -> livekit-protocol class.
START_EGRESS_KINDS: dict[str, type[Message]] = {
    "egress": lk_egress.StartEgressRequest,
    "replay": lk_egress.ExportReplayRequest,
    "room_composite": lk_egress.RoomCompositeEgressRequest,
    "web": lk_egress.WebEgressRequest,
    "participant": lk_egress.ParticipantEgressRequest,
    "track_composite": lk_egress.TrackCompositeEgressRequest,
    "track": lk_egress.TrackEgressRequest,
}
_KIND_OF = {cls: kind for kind, cls in START_EGRESS_KINDS.items()}


def unpack_start_egress(req: StartEgressRequest) -> tuple[str, Message]:
    """(kind, livekit request) of an rpc.StartEgressRequest; RpcError(invalid_argument) if empty/bad."""
    kind = req.WhichOneof("request")
    if kind is None:
        raise RpcError("invalid_argument", "StartEgressRequest carries no request")
    try:
        return kind, START_EGRESS_KINDS[kind].FromString(getattr(req, kind))
    except DecodeError:
        raise RpcError("malformed_request", f"cannot decode StartEgressRequest.{kind}") from None


def pack_start_egress(request: Message, *, egress_id: str, **fields: object) -> StartEgressRequest:
    """An rpc.StartEgressRequest around a livekit request (as livekit-server sends it)."""
    kind = _KIND_OF.get(type(request))
    if kind is None:
        raise TypeError(f"{type(request).__name__} is not a StartEgress request type")
    return StartEgressRequest(egress_id=egress_id, **{kind: request.SerializeToString()}, **fields)  # type: ignore[arg-type]


def nested(msg: Message, field: str, cls: type[Message]) -> Message | None:
    """A bytes-declared livekit message field parsed with ``cls`` (None when absent)."""
    if not msg.HasField(field):
        return None
    try:
        return cls.FromString(getattr(msg, field))
    except DecodeError:
        raise RpcError("malformed_request", f"cannot decode {type(msg).__name__}.{field}") from None


def ingress_info_of(res: GetIngressInfoResponse | StartIngressRequest) -> lk_ingress.IngressInfo | None:
    return nested(res, "info", lk_ingress.IngressInfo)  # type: ignore[return-value]


__all__ = [
    "DeleteWHIPResourceRequest", "EgressReadyRequest", "EgressReadyResponse", "GetEgressRequest",
    "GetIngressInfoRequest", "GetIngressInfoResponse", "ICERestartWHIPResourceRequest",
    "ICERestartWHIPResourceResponse", "IngressSession", "ListActiveEgressRequest", "ListActiveEgressResponse",
    "ListActiveIngressRequest", "ListActiveIngressResponse", "START_EGRESS_KINDS", "StartEgressRequest",
    "StartIngressRequest", "UpdateIngressStateRequest", "UpdateMetricsRequest", "WHIPRTCConnectionNotifyRequest",
    "ingress_info_of", "nested", "pack_start_egress", "unpack_start_egress",
]
