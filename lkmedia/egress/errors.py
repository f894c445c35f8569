"""Errors with the psrpc codes and messages the Go egress uses, so callers see the same."""
from __future__ import annotations

from ..worker.kind import JobError


class EgressError(JobError):
    """An error that reaches the API caller (and EgressInfo.error) with a psrpc code."""


class InvalidRequest(EgressError):
    code = "invalid_argument"


def invalid_input(field: str) -> InvalidRequest:
    return InvalidRequest(f"request has missing or invalid field: {field}")


def incompatible(fmt: str, codec: str) -> InvalidRequest:
    return InvalidRequest(f"format {fmt} incompatible with codec {codec}")


def not_supported(feature: str) -> InvalidRequest:
    return InvalidRequest(f"{feature} is not yet supported")


NO_COMPATIBLE_CODEC = "no supported codec is compatible with all outputs"
