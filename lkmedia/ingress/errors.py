"""Errors with the psrpc codes the Go ingress answers with (``pkg/errors``), in plain words."""
from __future__ import annotations

from ..worker.kind import JobError


class IngressError(JobError):
    """An error that reaches the caller (and IngressState.error) with a psrpc code."""


def invalid(why: str) -> IngressError:
    return IngressError(f"invalid ingress: {why}", "invalid_argument")


def not_found() -> IngressError:
    return IngressError("ingress not found", "not_found")


def disabled() -> IngressError:
    return IngressError("ingress disabled", "failed_precondition")


def wrong_input(expected: str, got: str) -> IngressError:
    return IngressError(f"ingress is for {got} input, not {expected}", "invalid_argument")


def no_capacity() -> IngressError:
    return IngressError("server capacity exceeded", "resource_exhausted")


def already_live() -> IngressError:
    return IngressError("this ingress is already publishing", "already_exists")
