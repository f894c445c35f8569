"""psrpc over Redis, byte-compatible with livekit-server v1.13.5 (psrpc v0.7.2).

Layers: ``channels`` (names, IDs) and ``wire`` (envelope, errors) are pure; ``bus`` is
the Redis link; ``server`` / ``client`` implement the psrpc roles; ``messages`` holds
the rpc/* protobufs; ``egress`` and ``ingress`` the typed LiveKit endpoints. What was checked
against a real livekit-server is recorded in docs/psrpc.md.
"""
from __future__ import annotations

from .bus import RedisBus, Subscription
from .client import START_EGRESS_SELECTION, RpcClient, SelectionOpts
from .server import RequestContext, Routing, RpcServer
from .wire import ERROR_CODES, RpcError

__all__ = [
    "ERROR_CODES", "RedisBus", "RequestContext", "Routing", "RpcClient", "RpcError", "RpcServer",
    "START_EGRESS_SELECTION", "SelectionOpts", "Subscription",
]
