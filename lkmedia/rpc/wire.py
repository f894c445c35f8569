"""The psrpc envelope and error codes.

Every Redis payload is ``internal.Msg{type_url, value}`` (fields 1-2 identical to
google.protobuf.Any, field 3 ``channel`` left empty on Redis). ``type_url`` is
``type.googleapis.com/internal.<Name>``; Go resolves the inner type from it, so the
psrpc messages live in proto package ``internal`` (lkmedia/rpc/protos/psrpc_internal.proto).
User payloads travel as raw bytes inside ``Request.raw_request`` / ``Response.raw_response``.
"""
from __future__ import annotations

from google.protobuf.message import DecodeError, Message

from .protos.psrpc_internal_pb2 import (
    ClaimRequest,
    ClaimResponse,
    Msg,
    Request,
    Response,
    Stream,
)

TYPE_URL_PREFIX = "type.googleapis.com/"

#: The envelope types this package sends or accepts, by full proto name.
ENVELOPE_TYPES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls for cls in (Request, Response, ClaimRequest, ClaimResponse, Stream)
}

#: psrpc v0.7.2 error codes (errors.go). An empty code reads as "unknown".
ERROR_CODES = frozenset(
    {
        "canceled", "malformed_request", "malformed_result", "deadline_exceeded", "unavailable",
        "unknown", "invalid_argument", "not_found", "not_acceptable", "already_exists",
        "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range",
        "unimplemented", "internal", "data_loss", "unauthenticated", "unprocessable_entity",
        "upstream_server_error", "upstream_client_error",
    }
)


class RpcError(Exception):
    """A psrpc error: ``code`` is one of ERROR_CODES, ``message`` travels to the caller
    (and, through livekit-server, to the Twirp API caller), so it must hold no secret."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown psrpc error code {code!r} (expected one of {sorted(ERROR_CODES)})")
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def from_response(cls, code: str, message: str) -> RpcError:
        """The error a Response carries; codes unknown to us become "unknown" (as Go does for "")."""
        return cls(code if code in ERROR_CODES else "unknown", message)


def no_response() -> RpcError:
    """psrpc ErrNoResponse: nobody claimed the request."""
    return RpcError("unavailable", "no response from servers")


def timed_out() -> RpcError:
    """psrpc ErrRequestTimedOut: no Response before the request timeout."""
    return RpcError("deadline_exceeded", "request timed out")


def encode(msg: Message) -> bytes:
    """``msg`` wrapped in the psrpc envelope, ready to PUBLISH."""
    full = msg.DESCRIPTOR.full_name
    if full not in ENVELOPE_TYPES:
        raise TypeError(f"{full} is not a psrpc envelope type")
    return Msg(type_url=TYPE_URL_PREFIX + full, value=msg.SerializeToString()).SerializeToString()


def decode(payload: bytes) -> Message | None:
    """The inner message of an envelope, or None for anything we do not know (Go skips
    unknown type_urls too). Raises DecodeError for bytes that are not an envelope."""
    env = Msg()
    env.ParseFromString(payload)
    cls = ENVELOPE_TYPES.get(env.type_url.rsplit("/", 1)[-1])
    if cls is None:
        return None
    inner = cls()
    inner.ParseFromString(env.value)
    return inner


__all__ = [
    "ClaimRequest", "ClaimResponse", "DecodeError", "ENVELOPE_TYPES", "ERROR_CODES", "Msg", "Request",
    "Response", "RpcError", "Stream", "TYPE_URL_PREFIX", "decode", "encode", "no_response", "timed_out",
]
