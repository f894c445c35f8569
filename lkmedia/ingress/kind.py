"""The ingress job kind as the worker core sees it (lkmedia.worker.kind.JobKind): what a
session costs (``cpu_cost:``), how an IngressInfo reads and is ended from outside, and what
a job process is given to run a spec (its launch: the join token and this node's ``ws_url``).

A job is one session of one ingress: its id is the ingress ID (the IngressHandler topic
livekit-server sends UpdateIngress / DeleteIngress to), so a second publisher on a key
that is live already finds its job running. Sessions are never queued: a publisher is
answered at once, admitted or refused.
"""
from __future__ import annotations

from typing import Any

from livekit.protocol import ingress as lk

from ..service.ingress_config import IngressConfig
from ..worker import codec
from ..worker.kind import Costs
from .spec import IngressLaunch, IngressSpec
from .state import FINAL, S, set_status

RESULTS = {S.ENDPOINT_INACTIVE: "completed", S.ENDPOINT_COMPLETE: "completed", S.ENDPOINT_ERROR: "process_error"}


def session_costs(c: IngressConfig, spec: IngressSpec) -> Costs:
    """CPUs one session reserves, by input (Go ``monitor.canAcceptIngress``); the label is the
    ``livekit_ingress_requests`` type (``whip:bypass`` for WHIP without transcoding,
    ``rtmp:bypass`` for RTMP passthrough)."""
    cc = c.cpu_cost
    if spec.input == "rtmp":
        cpu = cc.rtmp_cpu_cost if spec.transcode else cc.rtmp_passthrough_cpu_cost
    elif spec.input == "whip":
        cpu = cc.whip_cpu_cost if spec.transcode else cc.whip_bypass_transcoding_cpu_cost
    else:
        cpu = cc.url_cpu_cost
    return Costs(cpu, 0.0, False, spec.input if spec.transcode else f"{spec.input}:bypass")


class IngressKind:
    name = "ingress"
    runner = "lkmedia.ingress.runner"  # the child side: the session's job
    info_type = lk.IngressInfo

    def __init__(self, conf: IngressConfig) -> None:
        self.conf = conf
        #: resource ID -> (URL, headers) of the relay an RTMP session's job reads (set by the
        #: service before the job starts; secrets: never logged)
        self.relays: dict[str, tuple[str, str]] = {}
        #: resource ID -> the SDP offer a WHIP session's job answers (transcoding)
        self.offers: dict[str, str] = {}

    # -- specs ---------------------------------------------------------------------------
    def job_id(self, spec: IngressSpec) -> str:
        return spec.ingress_id

    def info_id(self, info: lk.IngressInfo) -> str:
        return info.ingress_id

    def decode_spec(self, data: Any) -> IngressSpec:
        return codec.decode(IngressSpec, data)

    def launch(self, spec: IngressSpec, relay_url: str = "", relay_headers: str = "") -> IngressLaunch:
        """``relay_*``: where an RTMP session's publish is read (lkmedia.service.ingress_relay);
        by default what ``relays`` holds for the session."""
        from .presets import ingress_token  # here, not at import: it brings the media stack along

        if not relay_url and spec.resource_id in self.relays:
            relay_url, relay_headers = self.relays[spec.resource_id]
        c = self.conf
        return IngressLaunch(spec, c.ws_url, ingress_token(c.api_key, c.api_secret, spec.info), relay_url,
                             relay_headers, whip_offer=self.offers.get(spec.resource_id, ""))

    def costs(self, spec: IngressSpec) -> Costs:
        return session_costs(self.conf, spec)

    def dedup_key(self, spec: IngressSpec) -> str:
        return spec.ingress_id

    def describe(self, spec: IngressSpec) -> dict[str, Any]:
        return spec.describe()

    # -- IngressInfo ----------------------------------------------------------------------
    def is_final(self, info: lk.IngressInfo) -> bool:
        return info.state.status in FINAL and info.state.ended_at != 0

    def started(self, info: lk.IngressInfo) -> bool:
        return info.state.status != S.ENDPOINT_BUFFERING

    def taken(self, info: lk.IngressInfo) -> lk.IngressInfo:
        return lk.IngressInfo.FromString(info.SerializeToString())  # sessions are never queued

    def queued(self, info: lk.IngressInfo, position: int) -> lk.IngressInfo:
        return lk.IngressInfo.FromString(info.SerializeToString())

    def ended(self, info: lk.IngressInfo, outcome: str, error: str = "", details: str = "") -> lk.IngressInfo:
        out = lk.IngressInfo.FromString(info.SerializeToString())
        set_status(out.state, S.ENDPOINT_ERROR, error or details or ("session aborted" if outcome == "aborted"
                                                                     else "session failed"))
        return out

    def result(self, info: lk.IngressInfo) -> str:
        return RESULTS.get(info.state.status, "process_error")
