"""Request -> spec: an rpc StartEgressRequest decoded and validated once, in the service.

``EgressSpec`` is what the queue stores and a job record keeps (portable across the
fleet: no node settings, no node secrets). ``EgressLaunch`` is what a job process is
given: the spec plus this node's connection, storage, limits and secrets. The job process
never validates again.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from livekit.protocol import egress as lk

from ..redact import redact_url
from ..rpc.messages import StartEgressRequest, unpack_start_egress
from ..rpc.wire import RpcError
from .config import ANY_ROOT, EgressConfig, egress_config
from .errors import EgressError, invalid_input


@dataclass
class EgressSpec:
    egress_id: str
    room_id: str
    kind: str  # the rpc request's oneof: room_composite, participant, track_composite, track, web, egress
    request: Message  # the livekit request as it came (its own upload keys included)
    config: EgressConfig  # validated
    ws_url: str = ""  # the rpc request's, when it has one (livekit-server leaves it empty)
    estimated_cpu: float = 0.0


@dataclass
class EgressLaunch:
    """A spec with what the node that runs it adds (never stored, never logged)."""
    spec: EgressSpec
    ws_url: str
    api_key: str
    api_secret: str
    tmp_dir: str  # the job's files go to <tmp_dir>/<egress_id>
    storage: dict[str, Any] = field(default_factory=dict)  # the server's storage: and backup: sections
    max_duration: float = 0.0  # session limits: 0 = none
    freeze_timeout: float = 30.0  # an output that takes no input this long fails the egress
    chrome: ChromeSettings = field(default_factory=lambda: ChromeSettings())


@dataclass
class ChromeSettings:
    """The node's Chrome options (the Go egress's keys; ``start_timeout``: lkmedia's
    ``jobs.start_signal_timeout``)."""
    template_base: str = ""
    sandbox: bool = False
    insecure: bool = False
    flags: dict[str, Any] = field(default_factory=dict)
    start_timeout: float = 60.0


def spec_from_request(req: StartEgressRequest, output_roots: Sequence[str] = ANY_ROOT) -> EgressSpec:
    """Decode and validate; EgressError (with the Go egress's code and message) if bad."""
    try:
        kind, inner = unpack_start_egress(req)
    except RpcError as e:
        raise EgressError(e.message, e.code) from None
    if not req.egress_id:
        raise invalid_input("egressID")
    cfg = egress_config(req.egress_id, req.room_id, inner, output_roots)
    return EgressSpec(req.egress_id, req.room_id, kind, inner, cfg, req.ws_url, float(req.estimated_cpu or 0.0))


def dedup_key(spec: EgressSpec) -> str:
    """Same request type and bytes (room, outputs, options): the same key."""
    h = hashlib.sha256(spec.kind.encode())
    h.update(spec.request.SerializeToString(deterministic=True))
    return h.hexdigest()


def initial_info(spec: EgressSpec) -> lk.EgressInfo:
    """The egress as livekit-server first learns of it: STARTING, its request without secrets."""
    now = time.time_ns()
    info = lk.EgressInfo(egress_id=spec.egress_id, room_id=spec.room_id, room_name=spec.config.room_name,
                         source_type=lk.EgressSourceType.EGRESS_SOURCE_TYPE_SDK, status=lk.EgressStatus.EGRESS_STARTING,
                         started_at=now, updated_at=now)
    getattr(info, spec.kind).CopyFrom(redacted(spec.request))
    return info


def redacted(msg: Any) -> Any:
    """A copy of a request fit for EgressInfo: stream keys and storage secrets removed."""
    out = type(msg).FromString(msg.SerializeToString())
    for so in list(getattr(out, "stream_outputs", [])) + ([out.stream] if _has(out, "stream") else []):
        _redact_urls(so)
    for name in ("file_outputs", "segment_outputs", "image_outputs"):
        for o in getattr(out, name, []):
            _scrub_upload(o)
    for name in ("file", "segments", "storage"):
        if _has(out, name):
            _scrub_upload(getattr(out, name))
    for o in getattr(out, "outputs", []):  # v2 StartEgress
        if o.HasField("stream"):
            _redact_urls(o.stream)
        for name in ("file", "segments", "images", "storage"):
            if o.HasField(name):
                _scrub_upload(getattr(o, name))
    return out


def _redact_urls(stream: Any) -> None:
    urls = [redact_url(u) for u in stream.urls]
    del stream.urls[:]
    stream.urls.extend(urls)


def _has(msg: Any, name: str) -> bool:
    return name in msg.DESCRIPTOR.fields_by_name and msg.HasField(name)


def _scrub_upload(o: Any) -> None:
    for provider, keys in (("s3", ("secret", "session_token")), ("azure", ("account_key",)),
                           ("gcp", ("credentials",)), ("aliOSS", ("secret",))):
        if _has(o, provider):
            sub = getattr(o, provider)
            for k in keys:
                if getattr(sub, k, ""):
                    setattr(sub, k, "{redacted}")
